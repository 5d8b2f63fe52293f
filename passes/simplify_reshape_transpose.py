"""Collapse chains of shape-only ops: Reshape after Reshape-like ops, Transpose after Transpose."""

from __future__ import annotations

import logging

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import (
    Model,
    bypass_node,
    constant_value,
    only_consumer,
    producer,
    set_constant_input,
    tensor_rank,
)
from dsqc.pass_infra import NodeRewritePass, PassResult

log = logging.getLogger(__name__)

# Ops that only relabel the dims of a row-major buffer: a Reshape after them sees the same
# elements in the same order, so it may read their input directly.
RESHAPE_LIKE = ("Reshape", "Flatten", "Squeeze", "Unsqueeze")
NO_CHAIN = "no chain"


def _chain(graph: gs.Graph, node: gs.Node, first_ops: tuple[str, ...]) -> gs.Node | str:
    """The node before ``node`` when it is one of ``first_ops`` and ``node`` alone reads it."""
    middle = node.inputs[0]
    first = producer(middle)
    if first is None or first.op not in first_ops:
        return NO_CHAIN
    if not only_consumer(graph, middle, node):
        return f"{middle.name} has other readers or is a graph output"
    return first


def _disconnect(node: gs.Node) -> None:
    """Detach a node whose only reader was just rewired, so chains further up see one reader."""
    node.inputs.clear()
    node.outputs.clear()


def _reshape_target(reshape: gs.Node) -> np.ndarray | str | None:
    """The shape ``reshape`` may keep once its input changes: ``None`` to keep its own input,
    a new constant when 0 entries (copy the input dim) must be spelled out, or the refusal."""
    if int(reshape.attrs.get("allowzero", 0)):
        return None
    target = constant_value(reshape.inputs[1])
    if target is None:
        return "target shape is not constant (its 0 entries could copy the middle shape)"
    if not np.any(target == 0):
        return None
    middle = reshape.inputs[0].shape
    spelled = target.astype(np.int64).copy()
    for i in np.flatnonzero(target == 0):
        dim = middle[i] if middle is not None and i < len(middle) else None
        if not isinstance(dim, (int, np.integer)):
            return f"0 entry {i} of the target copies an unknown dim of the middle tensor"
        spelled[i] = int(dim)
    return spelled


def _perm(node: gs.Node) -> list[int] | None:
    perm = node.attrs.get("perm")
    if perm is not None:
        return [int(p) for p in perm]
    rank = tensor_rank(node.inputs[0])
    return None if rank is None else list(reversed(range(rank)))


class SimplifyReshapeTranspose(NodeRewritePass):
    """Collapse shape-only chains where the middle tensor has no other reader and is not a graph
    output:

    - ``Reshape(R(x), s)`` for R in Reshape, Flatten, Squeeze, Unsqueeze becomes ``Reshape(x, s)``
      (the element order is unchanged, only the count matters). 0 entries of ``s`` copy a dim of
      the middle tensor, so with ``allowzero=0`` they are replaced by that dim when it is static;
      otherwise (or with a non-constant ``s``) it is refused. With ``allowzero=1`` a 0 is literal.
    - ``Transpose(Transpose(x, p1), p2)`` becomes ``Transpose(x, p1∘p2)``, and vanishes when that is
      the identity (unless it would rename a graph input to a graph output). A missing ``perm``
      (reverse) needs the input's rank; unknown rank refuses.
    """

    op_types = frozenset({"Reshape", "Transpose"})
    quiet_refusals = frozenset({NO_CHAIN})
    repeat = True  # each rewrite removes one op from the chain ending at the node

    def call(self, model: Model) -> PassResult:
        model.graph.toposort()  # producers first: a chain is collapsed from its end only once
        return super().call(model)

    def refusal(self, node: gs.Node, model: Model) -> str | None:
        first = _chain(model.graph, node, RESHAPE_LIKE if node.op == "Reshape" else ("Transpose",))
        if isinstance(first, str):
            return first
        if node.op == "Reshape":
            target = _reshape_target(node)
            return target if isinstance(target, str) else None
        p1, p2 = _perm(first), _perm(node)
        if p1 is None or p2 is None or len(p1) != len(p2):
            return "a perm is missing and the rank is unknown"
        return None

    def rewrite(self, node: gs.Node, model: Model) -> None:
        first = _chain(model.graph, node, RESHAPE_LIKE if node.op == "Reshape" else ("Transpose",))
        assert not isinstance(first, str)
        if node.op == "Reshape":
            self._reshape(model.graph, node, first)
        else:
            self._transpose(model.graph, node, first)

    @staticmethod
    def _reshape(graph: gs.Graph, reshape: gs.Node, first: gs.Node) -> None:
        target = _reshape_target(reshape)
        assert not isinstance(target, str)
        if target is not None:
            set_constant_input(graph, reshape, 1, target, f"{reshape.name}_shape")
        reshape.inputs[0] = first.inputs[0]
        _disconnect(first)

    def _transpose(self, graph: gs.Graph, second: gs.Node, first: gs.Node) -> None:
        p1, p2 = _perm(first), _perm(second)
        assert p1 is not None and p2 is not None
        composed = [p1[i] for i in p2]
        x = first.inputs[0]
        if composed == list(range(len(composed))):
            reason = bypass_node(graph, second, x)
            if reason is None:
                _disconnect(first)
                return
            log.debug("%s: keep identity %s: %s", self.name, second.name, reason)
        second.inputs[0] = x
        second.attrs["perm"] = composed
        _disconnect(first)
