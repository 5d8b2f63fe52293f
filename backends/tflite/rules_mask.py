"""Attention-mask plumbing of exported encoders: Cast, And/Or, Expand, Where.

After static shapes these compute a boolean mask from ``attention_mask`` and turn it into the additive
float mask (0 / dtype-min) that the attention scores receive; they run on bool/int/float tensors, never
int8, so they are not float islands of the int8 graph.
"""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from .graph import NUMPY_DTYPES
from .lowerer import Lowerer, Value
from .rulebook import rule
from .rules_common import unsupported
from .schema import options, schema

_TYPE_NAMES = {"float32": "FLOAT32", "int32": "INT32", "int64": "INT64", "bool": "BOOL", "int8": "INT8"}


def _dtype(node: gs.Node, tensor: gs.Tensor) -> str:
    name = np.dtype(tensor.dtype).name if tensor.dtype is not None else ""
    if name not in NUMPY_DTYPES:
        raise unsupported(node, f"tensor '{tensor.name}' has type {name or 'unknown'}")
    return name


def _operand(lw: Lowerer, node: gs.Node, tensor: gs.Tensor, dtype: str) -> int:
    """An input in its own dtype: a constant as stored, an activation plain (dequantized if int8)."""
    if lw.is_const(tensor):
        data = np.asarray(lw.const(tensor)).astype(NUMPY_DTYPES[dtype])
        return lw.g.const(f"{node.name}_{tensor.name}", data, dtype)
    idx = lw.to_layout(lw.value(tensor.name), "plain").tensor
    have = lw.g.tensors[idx].dtype
    if have == "int8" and dtype == "float32":
        return lw.dequantized(idx)
    if have != dtype:
        raise unsupported(node, f"input '{tensor.name}' is {have}, the op wants {dtype}")
    return idx


@rule("Cast")
def cast(lw: Lowerer, node: gs.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    src, dst = _dtype(node, x), _dtype(node, out)
    if src not in _TYPE_NAMES or dst not in _TYPE_NAMES:
        raise unsupported(node, f"cast {src} → {dst}")
    ins = [_operand(lw, node, x, src)]
    idx = lw.output(node, None, dtype=dst)
    types = schema().TensorType
    lw.g.op("CAST", ins, [idx], options("CAST", inDataType=getattr(types, _TYPE_NAMES[src]),
                                        outDataType=getattr(types, _TYPE_NAMES[dst])), node.name)


@rule("And", "Or")
def logical(lw: Lowerer, node: gs.Node) -> None:
    ins = [_operand(lw, node, t, "bool") for t in node.inputs]
    kind = "LOGICAL_AND" if node.op == "And" else "LOGICAL_OR"
    lw.g.op(kind, ins, [lw.output(node, None, dtype="bool")], options(kind), node.name)


@rule("Expand")
def expand(lw: Lowerer, node: gs.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    dtype = _dtype(node, x)
    src = _operand(lw, node, x, dtype)
    shape = lw.onnx_shape(out)
    if lw.g.tensors[src].shape == shape:  # static shapes made it a no-op
        _bind(lw, out, src)
        return
    shape_t = lw.g.const(f"{node.name}_shape", np.asarray(shape, np.int32))
    t = lw.g.tensors[src]
    idx = lw.output(node, None, dtype=t.dtype, quant=t.quant)
    lw.g.op("BROADCAST_TO", [src, shape_t], [idx], options("BROADCAST_TO"), node.name)


def _bind(lw: Lowerer, out: gs.Tensor, idx: int) -> None:
    lw.values[out.name] = Value(idx)


@rule("Where")
def where(lw: Lowerer, node: gs.Node) -> None:
    cond, a, b = node.inputs
    dtype = _dtype(node, node.outputs[0])
    ins = [_operand(lw, node, cond, "bool"), _operand(lw, node, a, dtype), _operand(lw, node, b, dtype)]
    idx = lw.output(node, None, dtype=dtype)
    lw.g.op("SELECT_V2", ins, [idx], options("SELECT_V2"), node.name)
