"""Evaluate every subgraph whose inputs are all constant and store its results as initializers."""

from __future__ import annotations

import logging
from collections.abc import Collection

import numpy as np
import onnx_graphsurgeon as gs
from onnx_graphsurgeon.logger import G_LOGGER

from dsqc.ir import Model, infer_shapes, static_shape
from dsqc.pass_infra import Pass, PassResult

log = logging.getLogger(__name__)

DEFAULT_SIZE_LIMIT = 64 << 20
# Ops whose result is not a function of their inputs (or that are part of a quantized graph's
# contract) are never evaluated ahead of time.
KEEP_OPS = frozenset({
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike",
    "Multinomial", "Bernoulli", "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
})


def _signature(graph: gs.Graph) -> tuple[int, frozenset[tuple[str, bool]]]:
    tensors = graph.tensors()
    return len(graph.nodes), frozenset((n, isinstance(t, gs.Constant)) for n, t in tensors.items())


def _fold_static_shapes(graph: gs.Graph) -> int:
    """Replace ``Shape(x)`` by a constant when every dimension of x is a known integer."""
    folded = 0
    for node in graph.nodes:
        if node.op != "Shape" or not node.outputs:
            continue
        shape = static_shape(node.inputs[0])
        if shape is None:
            continue
        rank = len(shape)
        start = int(node.attrs.get("start", 0))
        end = int(node.attrs.get("end", rank))
        out = node.outputs[0]
        node.outputs.clear()
        out.to_constant(np.asarray(shape[start:end], dtype=np.int64))
        folded += 1
    return folded


class FoldConstants(Pass):
    """Fold constant subgraphs: lower ``Constant`` nodes to initializers, replace ``Shape`` of a
    statically shaped tensor by its value, then evaluate (through onnx-graphsurgeon, which runs ONNX
    Runtime) every node whose inputs are all constant and keep the results as initializers.

    Refuses to materialise a tensor larger than ``size_limit`` bytes (default 64 MiB: Expand or
    Tile of a small constant stays computed at run time), to evaluate ops in ``keep_ops`` (random
    generators, Q/DQ), and Constant nodes holding sparse or string values. gs's shape-tensor cast
    elision is not used: it rewrites int arithmetic as float arithmetic, which is not exact.
    If evaluating the whole constant region fails, it is retried partition by partition. When
    something folded, shapes are inferred again (``dsqc.ir.infer_shapes``) and folding repeats once.
    """

    def __init__(self, size_limit: int = DEFAULT_SIZE_LIMIT, keep_ops: Collection[str] = KEEP_OPS):
        self.size_limit = size_limit
        self.keep_ops = frozenset(keep_ops)

    def _excluded(self, node: gs.Node) -> bool:
        return node.op in self.keep_ops

    def _fold(self, graph: gs.Graph) -> int:
        """One round: static Shape nodes, then gs folding. Returns the number of Shape folded."""
        shapes = _fold_static_shapes(graph)
        options = {
            "fold_shapes": False,
            "size_threshold": self.size_limit,
            "should_exclude_node": self._excluded,
        }
        with G_LOGGER.suppress():
            try:
                graph.fold_constants(error_ok=False, **options)
            except Exception as exc:  # ORT can refuse any op; fall back to partitions.
                log.info("%s: whole-graph evaluation failed (%s); retrying by partition",
                         self.name, str(exc).splitlines()[0] if str(exc) else type(exc).__name__)
                graph.fold_constants(error_ok=True, partitioning="basic", **options)
        graph.cleanup(remove_unused_graph_inputs=False).toposort()
        return shapes

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        before = _signature(graph)
        graph.toposort()
        shapes = self._fold(graph)
        # Folding can make shape inputs constant; shapes inferred again may then fold further.
        if _signature(graph) != before and infer_shapes(graph):
            shapes += self._fold(graph)
        after = _signature(graph)
        if after != before:
            log.debug("%s: %d → %d nodes (%d Shape folded)", self.name, before[0], after[0], shapes)
        return PassResult(model, after != before)
