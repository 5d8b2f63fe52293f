"""Rewrite a BatchNormalization that nothing can absorb as a per-channel Mul + Add."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model, constant_value, make_constant, tensor_rank
from dsqc.pass_infra import NodeRewritePass

from ._batchnorm import batchnorm_affine, batchnorm_refusal
from .fuse_conv_bn import fusion_refusal


def _unique_name(graph: gs.Graph, hint: str) -> str:
    taken = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
    name, index = hint, 0
    while name in taken:
        index += 1
        name = f"{hint}_{index}"
    return name


def _dtype(bn: gs.Node) -> np.dtype:
    """The dtype of BN's input (its scale's when the input's is unknown)."""
    if bn.inputs[0].dtype is not None:
        return np.dtype(bn.inputs[0].dtype)
    return np.asarray(constant_value(bn.inputs[1])).dtype


def conversion_refusal(graph: gs.Graph, bn: gs.Node) -> str | None:
    """Why ``bn`` is not rewritten as Mul + Add, or ``None`` if it is."""
    reason = batchnorm_refusal(graph, bn)
    if reason:
        return reason
    if fusion_refusal(graph, bn) is None:
        return "foldable into its producer: left for FuseConvBatchNorm"
    rank = tensor_rank(bn.inputs[0])
    if rank is None or rank < 2:
        return f"rank of {bn.inputs[0].name} is unknown or < 2"
    return None


class BatchNormToMulAdd(NodeRewritePass):
    """Replace inference-mode ``BatchNormalization(x)`` by ``Add(Mul(x, s), t)`` with constants
    ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s`` (float64, stored in x's dtype)
    shaped ``[C, 1, ...]`` so they broadcast along axis 1 for x's rank (``[C]`` for rank 2).

    Refuses when FuseConvBatchNorm could fold the BN into its producer (that is exact and costs no
    node), when x's rank is unknown, a BN parameter is not constant, or BN is in training form.
    The Add keeps BN's node name and output tensor, so graph output names are stable.
    """

    op_types = frozenset({"BatchNormalization"})

    def refusal(self, node: gs.Node, model: Model) -> str | None:
        return conversion_refusal(model.graph, node)

    def rewrite(self, node: gs.Node, model: Model) -> None:
        graph, bn = model.graph, node
        x, y = bn.inputs[0], bn.outputs[0]
        rank = tensor_rank(x)
        assert rank is not None
        dtype = _dtype(bn)
        scale, shift = batchnorm_affine(bn)
        shape = (-1,) + (1,) * (rank - 2)
        mul_const = make_constant(graph, f"{bn.name}_scale", scale.reshape(shape).astype(dtype))
        add_const = make_constant(graph, f"{bn.name}_shift", shift.reshape(shape).astype(dtype))
        scaled = gs.Variable(_unique_name(graph, f"{bn.name}_scaled"), dtype=x.dtype, shape=x.shape)
        mul_name = _unique_name(graph, f"{bn.name}_mul")
        bn.inputs.clear()
        bn.outputs.clear()
        graph.nodes.append(gs.Node("Mul", mul_name, inputs=[x, mul_const], outputs=[scaled]))
        graph.nodes.append(gs.Node("Add", bn.name, inputs=[scaled, add_const], outputs=[y]))
