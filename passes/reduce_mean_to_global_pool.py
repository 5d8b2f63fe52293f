"""Rewrite a ReduceMean over every spatial axis as GlobalAveragePool (+ Flatten when keepdims=0)."""

from __future__ import annotations

import onnx_graphsurgeon as gs

from dsqc.ir import Model, constant_value, tensor_rank
from dsqc.pass_infra import NodeRewritePass


def _axes(node: gs.Node) -> list[int] | None:
    """The reduced axes (attribute before opset 18, second input from 18), None when not constant."""
    if len(node.inputs) > 1 and not node.inputs[1].is_empty():
        value = constant_value(node.inputs[1])
        return None if value is None else [int(a) for a in value.reshape(-1)]
    axes = node.attrs.get("axes")
    return None if axes is None else [int(a) for a in axes]


class ReduceMeanToGlobalPool(NodeRewritePass):
    """``ReduceMean(x, axes=[2, …, rank-1])`` of an NC… tensor is ``GlobalAveragePool(x)``, followed by
    ``Flatten(axis=1)`` when ``keepdims=0`` (the pooled shape is [N, C, 1, …]). torch's
    ``x.mean([2, 3])`` (MNASNet, MobileNetV3-style heads) exports this way; every target knows the
    global pool (the HLS integer program and ORT's int8 kernels do not know ReduceMean).

    Refuses other axes, non-constant axes, ``noop_with_empty_axes``, and inputs of unknown or < 3 rank.
    The last node keeps ReduceMean's name and output tensor."""

    op_types = frozenset({"ReduceMean"})

    def refusal(self, node: gs.Node, model: Model) -> str | None:
        rank = tensor_rank(node.inputs[0])
        if rank is None or rank < 3:
            return f"rank of {node.inputs[0].name} is unknown or < 3"
        axes = _axes(node)
        if axes is None:
            return "axes are not constant (or absent: all axes)"
        if sorted(a % rank for a in axes) != list(range(2, rank)):
            return f"axes {axes} are not exactly the spatial axes 2..{rank - 1}"
        if int(node.attrs.get("noop_with_empty_axes", 0)):
            return "noop_with_empty_axes"
        return None

    def rewrite(self, node: gs.Node, model: Model) -> None:
        x, y = node.inputs[0], node.outputs[0]
        keep = int(node.attrs.get("keepdims", 1))
        node.inputs.clear()
        node.outputs.clear()
        if keep:
            model.graph.nodes.append(gs.Node("GlobalAveragePool", node.name, inputs=[x], outputs=[y]))
            return
        pooled = gs.Variable(f"{node.name}_pooled", dtype=x.dtype)
        model.graph.nodes.append(gs.Node("GlobalAveragePool", f"{node.name}_pool", inputs=[x],
                                         outputs=[pooled]))
        model.graph.nodes.append(gs.Node("Flatten", node.name, inputs=[pooled], outputs=[y],
                                         attrs={"axis": 1}))
