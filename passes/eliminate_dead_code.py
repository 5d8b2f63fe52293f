"""Remove nodes and initializers that no graph output depends on."""

from __future__ import annotations

import logging

import onnx_graphsurgeon as gs

from dsqc.ir import Model
from dsqc.pass_infra import Pass, PassResult

log = logging.getLogger(__name__)


def _count(graph: gs.Graph) -> tuple[int, int]:
    """(nodes, tensors) in ``graph`` and all its subgraphs."""
    nodes = len(graph.nodes) + sum(len(g.nodes) for g in graph.subgraphs(recursive=True))
    return nodes, len(graph.tensors())


class EliminateDeadCode(Pass):
    """Remove every node none of whose outputs reaches a graph output (also inside subgraphs of If
    and Loop bodies), and every initializer no remaining node reads.

    Keeps all graph inputs, used or not (they are the model's interface), and the unused optional
    outputs of live nodes (e.g. a Dropout mask: they are part of that node).
    """

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        before = _count(graph)
        graph.cleanup(remove_unused_graph_inputs=False, recurse_subgraphs=True).toposort()
        after = _count(graph)
        if after != before:
            log.debug("%s: %d → %d nodes, %d → %d tensors", self.name, before[0], after[0],
                      before[1], after[1])
        return PassResult(model, after != before)
