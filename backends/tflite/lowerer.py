"""The state of one ONNX → TFLite lowering, shared by the rules (``rules_*.py``) that ``lower.py`` runs.

Every ONNX tensor maps to a ``Value``: a TFLite tensor plus its layout. A DequantizeLinear on an
activation is a view (the value *is* the int8 tensor); a compute node whose inputs are all int8 and
whose output goes to a single QuantizeLinear runs in int8 and writes the Q's tensor directly
(``Lowerer.target``). Layout changes go through cached transposes, counted in ``LowerStats``.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dsqc.errors import UnsupportedError
from dsqc.ir import constant_value, default_opset
from dsqc.op_kinds import QDQ_OPS
from dsqc.static_shapes import fold_shapes, static_shapes

from .graph import NUMPY_DTYPES, Graph, QParams
from .schema import options

log = logging.getLogger(__name__)
NCHW_TO_NHWC = (0, 2, 3, 1)
NHWC_TO_NCHW = (0, 3, 1, 2)


@dataclass
class LowerOptions:
    io: str = "float"              # "float": float32 inputs/outputs; "int8": quantized I/O
    batch: int = 1
    input_layout: str = "nchw"     # "nhwc": 4-D inputs are taken NHWC (no edge transpose)
    output_layout: str = "nchw"


@dataclass
class Value:
    tensor: int
    layout: str = "plain"          # "plain" (ONNX shape), "nhwc", "flat_hwc" (Flatten of an NHWC tensor)
    chw: tuple[int, int, int] | None = None
    edge: bool = False


@dataclass
class LowerStats:
    edge_transposes: int = 0
    interior_transposes: list[str] = field(default_factory=list)
    float_nodes: list[str] = field(default_factory=list)
    float_reasons: dict[str, str] = field(default_factory=dict)
    requantize: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    undelegated: list[str] = field(default_factory=list)  # int8 ops XNNPACK leaves to builtin kernels


@dataclass
class Target:
    """Where an int8 node writes: the tensor name and parameters of its output QuantizeLinear."""

    name: str
    quant: QParams
    q_node: gs.Node


class Lowerer:
    def __init__(self, model: onnx.ModelProto, opts: LowerOptions | None = None) -> None:
        self.opts = opts or LowerOptions()
        self.onnx = fold_shapes(gs.import_onnx(static_shapes(model, self.opts.batch)))
        self.opset = default_opset(model)
        self.quantized = any(n.op_type in QDQ_OPS for n in model.graph.node)
        self.g = Graph()
        self.values: dict[str, Value] = {}
        self.qconst: dict[str, tuple[np.ndarray, QParams]] = {}
        self.consumed: set[str] = set()
        self.stats = LowerStats()
        self._cache: dict[tuple[int, str], int] = {}

    def graph_input(self, tensor: gs.Variable) -> None:
        shape = tuple(tensor.shape)
        readers = list(tensor.outputs)
        quantize = self.opts.io == "int8" and len(readers) == 1 and readers[0].op == "QuantizeLinear"
        nhwc = len(shape) == 4 and self.opts.input_layout == "nhwc"
        tfl_shape = _permute(shape, NCHW_TO_NHWC) if nhwc else shape
        layout = "nhwc" if nhwc else "plain"
        if quantize:
            q = readers[0]
            idx = self.g.add(q.outputs[0].name, tfl_shape, "int8", _qparams(q), nhwc=nhwc)
            self.values[q.outputs[0].name] = Value(idx, layout, edge=True)
            self.consumed.add(q.name)
        else:
            dtype = np.dtype(tensor.dtype).name if tensor.dtype is not None else "float32"
            if dtype not in NUMPY_DTYPES:
                raise UnsupportedError(f"graph input '{tensor.name}' has type {dtype}")
            idx = self.g.add(tensor.name, tfl_shape, dtype, nhwc=nhwc)
        self.values[tensor.name] = Value(idx, layout, edge=True)
        self.g.inputs.append(idx)

    def graph_output(self, tensor: gs.Tensor) -> None:
        value = self.values.get(tensor.name)
        if value is None:
            raise UnsupportedError(f"graph output '{tensor.name}' is not computed by any lowered node")
        if self.opts.output_layout == "nchw" or value.layout == "flat_hwc":
            value = self.to_layout(value, "plain", edge=True)
        idx = value.tensor
        if self.opts.io == "float" and self.g.tensors[idx].dtype != "float32":
            idx = self.dequantized(idx)
        self._rename(idx, tensor.name)
        self.g.outputs.append(idx)

    def _rename(self, idx: int, name: str) -> None:
        t = self.g.tensors[idx]
        if t.name != name and name not in self.g._names and idx not in self.g.inputs:
            self.g._names.discard(t.name)
            self.g._names.add(name)
            t.name = name

    # ---- Q / DQ ---------------------------------------------------------------------------
    def quantize(self, node: gs.Node) -> None:
        src, out = node.inputs[0], node.outputs[0]
        quant = _qparams(node)
        const = constant_value(src)
        if const is not None:
            raise UnsupportedError(f"node '{node.name}' (QuantizeLinear): quantizing the constant "
                                   f"'{src.name}' at run time; store it quantized with a DequantizeLinear")
        value = self.value(src.name)
        t = self.g.tensors[value.tensor]
        if t.dtype == "int8" and quant.same_as(t.quant):
            self.values[out.name] = value
            return
        idx = self.g.like(value.tensor, out.name, "int8", quant)
        self.g.op("QUANTIZE", [value.tensor], [idx], origin=node.name)
        if t.dtype == "int8":
            self.stats.requantize.append(node.name)
        self.values[out.name] = Value(idx, value.layout, value.chw, value.edge)

    def dequantize(self, node: gs.Node) -> None:
        src, out = node.inputs[0], node.outputs[0]
        const = constant_value(src)
        if const is not None:
            axis = int(node.attrs.get("axis", 1)) % max(const.ndim, 1)
            self.qconst[out.name] = (const, _qparams(node, axis if const.ndim else 0))
            return
        if node.attrs.get("block_size"):
            raise UnsupportedError(f"node '{node.name}' (DequantizeLinear): blockwise activations")
        self.values[out.name] = self.value(src.name)

    # ---- values ---------------------------------------------------------------------------
    def value(self, name: str) -> Value:
        if name not in self.values:
            raise UnsupportedError(f"tensor '{name}' is read before any lowered node writes it")
        return self.values[name]

    def const(self, tensor: gs.Tensor) -> np.ndarray | None:
        """A constant operand in float (dequantized when stored int8 behind a DequantizeLinear)."""
        if tensor.name in self.qconst:
            data, quant = self.qconst[tensor.name]
            return quant.dequantize(data)
        value = constant_value(tensor)
        return None if value is None else np.asarray(value)

    def is_const(self, tensor: gs.Tensor) -> bool:
        return tensor.name in self.qconst or constant_value(tensor) is not None

    def is_int8(self, name: str) -> bool:
        return name in self.values and self.g.tensors[self.values[name].tensor].dtype == "int8"

    def onnx_shape(self, tensor: gs.Tensor) -> tuple[int, ...]:
        shape = tensor.shape
        if shape is None or not all(isinstance(d, int | np.integer) for d in shape):
            raise UnsupportedError(f"tensor '{tensor.name}' has no static shape (batch fixed to "
                                   f"{self.opts.batch}); the tflite target needs static shapes")
        return tuple(int(d) for d in shape)

    def target(self, node: gs.Node, act_inputs: list[str], result: gs.Tensor | None = None) -> Target | None:
        """Int8 placement: all activation inputs int8 and the output (``result``) read by a single Q."""
        if not act_inputs or not all(self.is_int8(n) for n in act_inputs):
            return None
        out = result if result is not None else node.outputs[0]
        readers = list(out.outputs)
        if len(readers) != 1 or readers[0].op != "QuantizeLinear" or any(o is out for o in self.onnx.outputs):
            return None
        q = readers[0]
        quant = _qparams(q)
        if not quant.per_tensor:
            raise UnsupportedError(f"node '{q.name}' (QuantizeLinear): per-channel activation quantization")
        return Target(q.outputs[0].name, quant, q)

    def output(self, node: gs.Node, target: Target | None, layout: str = "plain", dtype: str = "float32",
               quant: QParams | None = None, result: gs.Tensor | None = None,
               chw: tuple[int, int, int] | None = None) -> int:
        """Create the TFLite tensor for ``result`` (default ``node.outputs[0]``) and bind the ONNX name(s)."""
        onnx_out = result if result is not None else node.outputs[0]
        shape = self.onnx_shape(onnx_out)
        if layout == "nhwc":
            shape = _permute(shape, NCHW_TO_NHWC)
        if target is not None:
            name, dtype, quant = target.name, "int8", target.quant
            self.consumed.add(target.q_node.name)
        else:
            name = onnx_out.name
            if dtype == "float32" and self.quantized:
                self.stats.float_nodes.append(node.name)
                self.stats.float_reasons[node.name] = self._float_reason(node, onnx_out)
        idx = self.g.add(name, shape, dtype, quant, nhwc=layout == "nhwc")
        value = Value(idx, layout, chw)
        self.values[onnx_out.name] = value
        if target is not None:
            self.values[target.name] = value
        return idx

    def _float_reason(self, node: gs.Node, out: gs.Tensor) -> str:
        """Why a node of a quantized model runs in float (the planner's reason is added by the backend)."""
        acts = [t for t in node.inputs if t.name and not self.is_const(t)]
        if acts and not all(self.is_int8(t.name) for t in acts):
            return "its inputs are float in the QDQ model"
        readers = list(out.outputs)
        if any(o is out for o in self.onnx.outputs) or not (len(readers) == 1 and
                                                             readers[0].op == "QuantizeLinear"):
            return "its output is not quantized (a graph output or read in float)"
        return f"{node.op}: no int8 TFLite kernel; runs in float between DEQUANTIZE and QUANTIZE"

    def float_in(self, name: str, layout: str | None = None) -> int:
        value = self.value(name) if layout is None else self.to_layout(self.value(name), layout)
        idx = value.tensor
        return idx if self.g.tensors[idx].dtype == "float32" else self.dequantized(idx)

    def int8_in(self, name: str, layout: str | None = None) -> int:
        value = self.value(name) if layout is None else self.to_layout(self.value(name), layout)
        return value.tensor

    def dequantized(self, idx: int) -> int:
        key = (idx, "dequantize")
        if key not in self._cache:
            t = self.g.tensors[idx]
            out = self.g.like(idx, f"{t.name}_dequantized", "float32")
            self.g.op("DEQUANTIZE", [idx], [out])
            self._cache[key] = out
        return self._cache[key]

    def to_layout(self, value: Value, layout: str, edge: bool = False) -> Value:
        """The same data in ``layout`` ("plain" or "nhwc"), via a cached TRANSPOSE / RESHAPE."""
        if value.layout == layout:
            return value
        t = self.g.tensors[value.tensor]
        if value.layout == "flat_hwc":  # a 2-D [N, H·W·C] tensor: back to ONNX's C·H·W column order
            key = (value.tensor, "plain")
            if key not in self._cache:
                assert value.chw is not None
                c, h, w = value.chw
                nhwc = self.reshape(value.tensor, (t.shape[0], h, w, c), f"{t.name}_nhwc")
                nchw = self._transpose(nhwc, NHWC_TO_NCHW, f"{t.name}_nchw", edge or value.edge)
                self._cache[key] = self.reshape(nchw, t.shape, f"{t.name}_chw")
            return Value(self._cache[key], "plain", None, value.edge)
        key = (value.tensor, layout)
        if key not in self._cache:
            if layout == "nhwc":
                self._cache[key] = self._transpose(value.tensor, NCHW_TO_NHWC, f"{t.name}_nhwc",
                                                   edge or value.edge)
            else:
                self._cache[key] = self._transpose(value.tensor, NHWC_TO_NCHW, f"{t.name}_nchw",
                                                   edge or value.edge)
        return Value(self._cache[key], layout, None, value.edge)

    def _transpose(self, idx: int, perm: tuple[int, ...], name: str, edge: bool) -> int:
        t = self.g.tensors[idx]
        out = self.g.like(idx, name, shape=_permute(t.shape, perm), nhwc=perm == NCHW_TO_NHWC)
        perm_t = self.g.const(f"{name}_perm", np.asarray(perm, np.int32))
        self.g.op("TRANSPOSE", [idx, perm_t], [out], options("TRANSPOSE"))
        if edge:
            self.stats.edge_transposes += 1
        else:
            self.stats.interior_transposes.append(t.name)
        return out

    def reshape(self, idx: int, shape: tuple[int, ...], name: str, origin: str = "") -> int:
        out = self.g.like(idx, name, shape=tuple(shape), nhwc=False)
        shape_t = self.g.const(f"{name}_shape", np.asarray(shape, np.int32))
        self.g.op("RESHAPE", [idx, shape_t], [out], options("RESHAPE", newShape=list(shape)), origin)
        return out


def _qparams(node: gs.Node, axis: int = 0) -> QParams:
    scale = constant_value(node.inputs[1])
    zero = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if scale is None:
        raise UnsupportedError(f"node '{node.name}' ({node.op}): scale is not a constant")
    if zero is not None and zero.dtype not in (np.int8, np.int32):
        raise UnsupportedError(f"node '{node.name}' ({node.op}): {zero.dtype} quantization; the tflite "
                               "target takes int8 activations and weights (build with --target tflite)")
    return QParams.of(scale, np.zeros_like(scale, np.int64) if zero is None else zero, axis)


def _permute(shape: tuple[int, ...], perm: tuple[int, ...]) -> tuple[int, ...]:
    return tuple(shape[p] for p in perm)
