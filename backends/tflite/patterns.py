"""Multi-node patterns recognized before lowering (looking through Q→DQ pairs).

GELU as exported by torch: ``Mul(Mul(x, Add(Erf(Div(x, √2)), 1)), 0.5)`` → one TFLite GELU.
``MatMul`` + ``Add`` of a constant vector → one FULLY_CONNECTED with that bias.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import constant_value
from dsqc.op_kinds import is_matmul_bias


@dataclass
class Match:
    """``final``'s output is computed from ``source`` alone; ``inner`` nodes disappear."""

    final: gs.Node
    source: str
    inner: list[gs.Node] = field(default_factory=list)
    bias: np.ndarray | None = None


def real_readers(tensor: gs.Tensor) -> tuple[list[gs.Node], list[gs.Node]]:
    """Readers of ``tensor`` seen through one Q → DQ hop, and the Q/DQ nodes skipped."""
    readers, skipped = list(tensor.outputs), []
    if len(readers) == 1 and readers[0].op == "QuantizeLinear":
        q = readers[0]
        dqs = list(q.outputs[0].outputs)
        if dqs and all(d.op == "DequantizeLinear" for d in dqs):
            skipped = [q, *dqs]
            readers = [r for d in dqs for r in d.outputs[0].outputs]
    return readers, skipped


def origin(tensor: gs.Tensor) -> str:
    """The float tensor behind a DQ ← Q chain (identity for anything else)."""
    if tensor.inputs and tensor.inputs[0].op == "DequantizeLinear":
        src = tensor.inputs[0].inputs[0]
        if src.inputs and src.inputs[0].op == "QuantizeLinear":
            return str(src.inputs[0].inputs[0].name)
    return str(tensor.name)


def _const_operand(node: gs.Node, value: float, tol: float = 1e-3) -> gs.Tensor | None:
    """The non-constant operand when the other operand is the scalar ``value``."""
    if len(node.inputs) != 2:
        return None
    for i in (0, 1):
        c = constant_value(node.inputs[1 - i])
        if c is not None and c.size == 1 and abs(float(c.reshape(-1)[0]) - value) <= tol * abs(value):
            return node.inputs[i]
    return None


def _single(tensor: gs.Tensor, graph: gs.Graph, op: str, inner: list[gs.Node]) -> gs.Node | None:
    if any(o is tensor for o in graph.outputs):
        return None
    readers, skipped = real_readers(tensor)
    if len(readers) != 1 or readers[0].op != op:
        return None
    inner.extend(skipped)
    return readers[0]


def find_gelu(graph: gs.Graph) -> list[Match]:
    matches = []
    for erf in (n for n in graph.nodes if n.op == "Erf"):
        inner: list[gs.Node] = [erf]
        src = erf.inputs[0]
        pre = src.inputs[0] if src.inputs else None
        if pre is not None and pre.op == "DequantizeLinear":
            continue  # the scaled input itself was quantized: not the exported pattern
        x = None
        if pre is not None and pre.op == "Div":
            x = _const_operand(pre, math.sqrt(2.0))
        elif pre is not None and pre.op == "Mul":
            x = _const_operand(pre, 1 / math.sqrt(2.0))
        if x is None or len(src.outputs) != 1:
            continue
        inner.append(pre)
        add = _single(erf.outputs[0], graph, "Add", inner)
        if add is None or _const_operand(add, 1.0) is None:
            continue
        inner.append(add)
        mul = _single(add.outputs[0], graph, "Mul", inner)
        if mul is None:
            continue
        other = [t for t in mul.inputs if t is not add.outputs[0] and origin(t) != origin(add.outputs[0])]
        if len(other) != 1 or origin(other[0]) != origin(x):
            continue
        inner.append(mul)
        half = _single(mul.outputs[0], graph, "Mul", inner)
        if half is None or _const_operand(half, 0.5) is None:
            continue
        matches.append(Match(half, x.name, inner))
    return matches


def find_bias_add(graph: gs.Graph, matmul: gs.Node, weight: np.ndarray) -> Match | None:
    """MatMul(x, W) → [Q→DQ] → Add(·, b) with a constant b of shape [N]: the FC's bias."""
    inner: list[gs.Node] = []
    add = _single(matmul.outputs[0], graph, "Add", inner)
    if add is None:
        return None
    others = [t for t in add.inputs if constant_value(t) is not None]
    if len(others) != 1:
        return None
    bias = np.asarray(constant_value(others[0]))
    if not is_matmul_bias(weight.shape, bias.shape):
        return None
    return Match(add, matmul.inputs[0].name, [*inner], bias.reshape(-1).astype(np.float32))
