"""QDQ (or FP32) ONNX → TFLite-level ``Graph``.

Every ONNX tensor maps to a ``Value``: a TFLite tensor plus its layout. A DequantizeLinear on an
activation is a view (the value *is* the int8 tensor); a compute node whose inputs are all int8 and
whose output goes to a single QuantizeLinear runs in int8 and writes the Q's tensor directly. Any
other node runs in float: DEQUANTIZE in, float op, QUANTIZE out (a float island). 4-D activations
go NHWC at the first spatial op; transposes are inserted only where a node needs the other layout
and are counted (``edge`` when next to a graph input or output).
"""

from __future__ import annotations

import onnx

from dsqc.errors import UnsupportedError

from . import rules_conv, rules_mask, rules_shape  # noqa: F401  (register rules)
from .graph import Graph
from .lowerer import Lowerer, LowerOptions, LowerStats
from .patterns import Match, find_gelu
from .rulebook import RULES
from .rules_math import gelu

__all__ = ["LowerOptions", "LowerStats", "lower"]
_IGNORED = {"Constant"}


def lower(model: onnx.ModelProto, opts: LowerOptions | None = None) -> tuple[Graph, LowerStats]:
    """Lower a QDQ or FP32 ONNX model; raises ``UnsupportedError`` naming the first node it cannot map."""
    lowerer = Lowerer(model, opts)
    graph = run(lowerer)
    graph.prune()
    return graph, lowerer.stats


def run(lw: Lowerer) -> Graph:
    """Lower every node in topological order: Q/DQ bind values, other ops go through their rule."""
    lw.onnx.toposort()
    taken = {n.name for n in lw.onnx.nodes}
    for i, node in enumerate(lw.onnx.nodes):  # bookkeeping is by node name: name every node
        if not node.name:
            node.name = next(f"{node.op}_{i}_{k}" for k in range(len(taken) + 1)
                             if f"{node.op}_{i}_{k}" not in taken)
            taken.add(node.name)
    macros: dict[str, Match] = {}
    for match in find_gelu(lw.onnx):
        lw.consumed.update(n.name for n in match.inner)
        macros[match.final.name] = match
    for tensor in lw.onnx.inputs:
        lw.graph_input(tensor)
    for node in lw.onnx.nodes:
        if node.name in lw.consumed or node.op in _IGNORED:
            continue
        if node.name in macros:
            gelu(lw, macros[node.name])
        elif node.op == "QuantizeLinear":
            lw.quantize(node)
        elif node.op == "DequantizeLinear":
            lw.dequantize(node)
        elif node.op in RULES:
            RULES[node.op](lw, node)
        else:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): the tflite target has no lowering "
                                   "for this op")
    for tensor in lw.onnx.outputs:
        lw.graph_output(tensor)
    return lw.g
