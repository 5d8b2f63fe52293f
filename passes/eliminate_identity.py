"""Remove nodes that pass their input through unchanged."""

from __future__ import annotations

from typing import TypeAlias

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dsqc.ir import (
    Model,
    bypass_node,
    bypass_refusal,
    constant_value,
    is_used,
    static_shape,
    tensor_rank,
)
from dsqc.pass_infra import NodeRewritePass

NEUTRAL = {"Mul": 1, "Div": 1, "Add": 0, "Sub": 0}
COMMUTATIVE = ("Mul", "Add")
HANDLED = frozenset({"Identity", "Dropout", "Cast", "Transpose", "Reshape", "Pad", *NEUTRAL})
Passthrough: TypeAlias = "gs.Tensor | str"


def _broadcast_refusal(x: gs.Tensor, const: np.ndarray) -> str | None:
    """Why ``x (op) const`` could have a different shape than ``x``, or ``None``."""
    rank = tensor_rank(x)
    if rank is None or const.ndim > rank:
        return f"constant of shape {const.shape} may broadcast {x.name} to a larger rank"
    dims = list(x.shape)[rank - const.ndim:]
    for d, c in zip(dims, const.shape, strict=True):
        if c != 1 and d != c:
            return f"constant of shape {const.shape} may broadcast {x.name} {tuple(x.shape)}"
    return None


def _arithmetic(node: gs.Node) -> Passthrough:
    neutral = NEUTRAL[node.op]
    sides = [(0, 1), (1, 0)] if node.op in COMMUTATIVE else [(0, 1)]
    for keep, other in sides:
        const = constant_value(node.inputs[other])
        if const is not None and const.size and np.all(const == neutral):
            return _broadcast_refusal(node.inputs[keep], const) or node.inputs[keep]
    side = "operand" if node.op in COMMUTATIVE else "right operand"
    return f"no constant {neutral} {side}"


def _dropout(graph: gs.Graph, node: gs.Node, opset: int) -> Passthrough:
    if any(is_used(graph, t) for t in node.outputs[1:]):
        return "mask output is used"
    if opset < 7 and int(node.attrs.get("is_test", 0)) == 0:
        return "is_test=0 (training)"
    if len(node.inputs) > 2 and not node.inputs[2].is_empty():
        training = constant_value(node.inputs[2])
        if training is None or bool(training.any()):
            return "training_mode is not constant false"
    return node.inputs[0]


def _cast(node: gs.Node) -> Passthrough:
    x = node.inputs[0]
    try:
        target = onnx.helper.tensor_dtype_to_np_dtype(int(node.attrs["to"]))
    except (KeyError, TypeError, ValueError):
        return "unsupported target type"
    try:
        same = x.dtype is not None and np.dtype(x.dtype) == np.dtype(target)
    except TypeError:  # graphsurgeon leaves types numpy lacks (bfloat16, float8) as ONNX enum ints
        same = False
    return x if same else f"casts {x.dtype} to {np.dtype(target)}"


def _transpose(node: gs.Node) -> Passthrough:
    perm = node.attrs.get("perm")
    if perm is None or list(perm) != list(range(len(perm))):
        return f"perm {perm} is not the identity"
    return node.inputs[0]


def _reshape(node: gs.Node) -> Passthrough:
    x = node.inputs[0]
    shape, target = static_shape(x), constant_value(node.inputs[1])
    if shape is None or target is None:
        return "input shape or target shape is not static"
    zero_copies = int(node.attrs.get("allowzero", 0)) == 0
    resolved = [
        shape[i] if (d == 0 and zero_copies and i < len(shape)) else int(d)
        for i, d in enumerate(target.tolist())
    ]
    if -1 in resolved and len(resolved) == len(shape):
        known = int(np.prod([d for d in resolved if d != -1]))
        resolved[resolved.index(-1)] = int(np.prod(shape)) // known if known else -1
    if tuple(resolved) != shape:
        return f"reshapes {shape} to {target.tolist()}"
    return x


def _pad(node: gs.Node, opset: int) -> Passthrough:
    if opset < 11:
        pads = node.attrs.get("pads")
    else:
        pads = constant_value(node.inputs[1]) if len(node.inputs) > 1 else None
    if pads is None or np.any(np.asarray(pads) != 0):
        return "pads are not constant zeros"
    return node.inputs[0]


def passthrough(graph: gs.Graph, node: gs.Node, opset: int) -> Passthrough:
    """The input that ``node`` passes through unchanged, or the reason it is not a no-op."""
    if node.domain not in (None, "", "ai.onnx"):
        return f"domain {node.domain}"
    if node.op == "Identity":
        return node.inputs[0]
    if node.op == "Dropout":
        return _dropout(graph, node, opset)
    if node.op == "Cast":
        return _cast(node)
    if node.op == "Transpose":
        return _transpose(node)
    if node.op == "Reshape":
        return _reshape(node)
    if node.op == "Pad":
        return _pad(node, opset)
    if node.op in NEUTRAL and len(node.inputs) == 2:
        return _arithmetic(node)
    return f"{node.op} is not a pass-through op"


class EliminateIdentity(NodeRewritePass):
    """Remove pass-through nodes: Identity; Dropout (only inference: training_mode absent or constant
    false, and its mask unused); Cast to the input's own dtype; Transpose with the identity perm;
    Reshape of a statically shaped input to that same shape; Pad with all-zero pads; ``x * 1``,
    ``x / 1``, ``x + 0``, ``0 + x``, ``x - 0`` with a constant whose broadcasting leaves x's shape
    unchanged (x's rank and, for dims where the constant is not 1, x's dims must be known).

    Readers of the removed node's output read its input instead. When that output is a graph output,
    the input's producer is made to write it, so output names are stable; this is refused when the
    input is a graph input, a constant, or itself a graph output. Unknown dtypes or shapes refuse.
    """

    op_types = HANDLED

    def refusal(self, node: gs.Node, model: Model) -> str | None:
        kept = passthrough(model.graph, node, model.opset)
        return kept if isinstance(kept, str) else bypass_refusal(model.graph, node, kept)

    def rewrite(self, node: gs.Node, model: Model) -> None:
        kept = passthrough(model.graph, node, model.opset)
        assert not isinstance(kept, str)
        bypass_node(model.graph, node, kept)
