"""Fold inference-mode BatchNormalization into the Conv/ConvTranspose/Gemm/MatMul before it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import (
    Model,
    constant_value,
    make_constant,
    only_consumer,
    producer,
    set_constant_input,
    tensor_rank,
)
from dsqc.op_kinds import COMPUTE_OPS, CONV_OPS, output_channels, weight_output_axis
from dsqc.pass_infra import NodeRewritePass

from ._batchnorm import batchnorm_affine, batchnorm_refusal

FUSABLE = COMPUTE_OPS


def _weight_slot(node: gs.Node) -> int | str:
    """Index of the constant weight input of ``node``, or why there is none that BN can scale.

    BN scales axis 1 of its input. For ``MatMul(X, W)`` that is W's output axis only when the
    product is 2-D; for ``MatMul(W, X)`` with a 3-D ``X`` it is W's row axis.
    """
    if node.op != "MatMul":
        return 1
    left, right = node.inputs[0], node.inputs[1]
    right_w, left_w = constant_value(right), constant_value(left)
    if right_w is not None and right_w.ndim == 2:
        rank = tensor_rank(left)
        if rank == 2:
            return 1
        if rank is None:
            return f"rank of {left.name} is unknown"
        return f"MatMul output is {rank}-D: BN channel axis 1 is not the weight's output axis"
    if left_w is not None and left_w.ndim == 2 and tensor_rank(right) == 3:
        return 0
    return "MatMul has no constant 2-D weight on a foldable side"


def _channel_axis(node: gs.Node, slot: int) -> int:
    """Axis of the weight that indexes output channels (ConvTranspose: within a group); for
    ``MatMul(W, X)`` (slot 0) the rows of W."""
    return weight_output_axis(node) if slot == 1 else 0


def _out_channels(node: gs.Node, slot: int, weight: np.ndarray) -> int:
    return output_channels(node, weight.shape) if slot == 1 else int(weight.shape[0])


def _scaled_weight(node: gs.Node, slot: int, weight: np.ndarray, scale: np.ndarray) -> np.ndarray:
    """``weight`` with every output channel multiplied by its ``scale`` (float64)."""
    w = weight.astype(np.float64)
    if node.op == "ConvTranspose":
        # W is [Cin, Cout/group, k...]; output channel = g * Cout/group + j for input group g.
        group = int(node.attrs.get("group", 1))
        per_group = w.reshape(group, w.shape[0] // group, w.shape[1], -1)
        return (per_group * scale.reshape(group, 1, w.shape[1], 1)).reshape(w.shape)
    shape = [1] * w.ndim
    shape[_channel_axis(node, slot)] = -1
    return w * scale.reshape(shape)


def _constant_refusal(tensor: gs.Tensor, node: gs.Node, role: str) -> str | None:
    if constant_value(tensor) is None:
        return f"{role} {tensor.name} is not constant"
    if len(tensor.outputs) != 1 or tensor.outputs[0] is not node:
        return f"{role} {tensor.name} is shared"
    return None


def _bias_tensor(node: gs.Node) -> gs.Tensor | None:
    if node.op == "MatMul" or len(node.inputs) < 3 or node.inputs[2].is_empty():
        return None
    return node.inputs[2]


def fusion_refusal(graph: gs.Graph, bn: gs.Node) -> str | None:
    """Pattern and check: why ``bn`` cannot be folded into its producer, or ``None`` if it can."""
    reason = batchnorm_refusal(graph, bn)
    if reason:
        return reason
    x = bn.inputs[0]
    node = producer(x)
    if node is None or node.op not in FUSABLE or node.domain not in (None, "", "ai.onnx"):
        return f"{x.name} is not produced by {'/'.join(FUSABLE)}"
    if not only_consumer(graph, x, bn):
        return f"{x.name} has other readers or is a graph output"
    slot = _weight_slot(node)
    if isinstance(slot, str):
        return slot
    weight = constant_value(node.inputs[slot])
    reason = _constant_refusal(node.inputs[slot], node, "weight")
    if reason or weight is None:
        return reason or "weight is not constant"
    if not np.issubdtype(weight.dtype, np.floating):
        return f"weight dtype {weight.dtype} is not floating point"
    bias = _bias_tensor(node)
    if bias is not None:
        reason = _constant_refusal(bias, node, "bias")
        if reason:
            return reason
    if node.op == "ConvTranspose" and weight.shape[0] % int(node.attrs.get("group", 1)):
        return "ConvTranspose weight does not split into its groups"
    channels = int(np.asarray(constant_value(bn.inputs[1])).size)
    if _out_channels(node, slot, weight) != channels:
        return f"{node.op} has {_out_channels(node, slot, weight)} channels, BN has {channels}"
    return None


def _rewrite(graph: gs.Graph, bn: gs.Node) -> None:
    x, y = bn.inputs[0], bn.outputs[0]
    node = producer(x)
    assert node is not None
    slot = _weight_slot(node)
    assert isinstance(slot, int)
    weight = np.asarray(constant_value(node.inputs[slot]))
    dtype = weight.dtype
    scale, shift = batchnorm_affine(bn)
    fused = _scaled_weight(node, slot, weight, scale).astype(dtype)
    set_constant_input(graph, node, slot, fused, f"{node.name}_weight")
    bias_tensor = _bias_tensor(node)
    bias = np.zeros(1) if bias_tensor is None else np.asarray(constant_value(bias_tensor), np.float64)
    bn.inputs.clear()
    bn.outputs.clear()
    if node.op in CONV_OPS:
        set_constant_input(graph, node, 2, (bias * scale + shift).astype(dtype), f"{node.name}_bias")
    elif node.op == "Gemm":
        beta = float(node.attrs.get("beta", 1.0)) if bias_tensor is not None else 0.0
        node.attrs["beta"] = 1.0
        new_c = beta * bias * scale + shift
        set_constant_input(graph, node, 2, new_c.astype(dtype), f"{node.name}_bias")
    elif slot == 1:  # MatMul(X, W) with 2-D X is exactly Gemm(X, W, C).
        node.op = "Gemm"
        node.attrs.clear()
        set_constant_input(graph, node, 2, shift.astype(dtype), f"{node.name}_bias")
    else:  # MatMul(W, X) with 3-D X: the bias runs along rows, so it needs its own Add.
        const = make_constant(graph, f"{node.name}_bias", shift.reshape(-1, 1).astype(dtype))
        graph.nodes.append(gs.Node("Add", bn.name, inputs=[x, const], outputs=[y]))
        return
    node.outputs[0] = y


class FuseConvBatchNorm(NodeRewritePass):
    """Fold ``BatchNormalization(op(x, W, b))`` into ``op`` for op in Conv, ConvTranspose, Gemm and
    MatMul with a constant 2-D weight: ``W' = W * s`` per output channel and ``b' = b * s + t``
    where ``s = gamma / sqrt(var + eps)`` and ``t = beta - mean * s`` (float64, stored in W's dtype).

    Channel axis of W: Conv 0; ConvTranspose 1 within each of ``group`` blocks; Gemm 1 (transB=0)
    or 0 (transB=1), and Gemm's ``beta`` is folded into C (then ``beta=1``); ``MatMul(X, W)`` with
    2-D X becomes ``Gemm(X, W', b')``; ``MatMul(W, X)`` with 3-D X keeps the MatMul and gets an Add
    of a [C, 1] constant.

    Refuses (logged at DEBUG) when the producer's output has other readers or is a graph output,
    the weight or bias or a BN parameter is not constant, the weight or bias is read by another
    node, BN is in training form or its statistics outputs are used, channel counts disagree, or
    ``MatMul(X, W)`` is not 2-D (BN's channel axis 1 then is not W's output axis: not foldable).
    """

    op_types = frozenset({"BatchNormalization"})

    def refusal(self, node: gs.Node, model: Model) -> str | None:
        return fusion_refusal(model.graph, node)

    def rewrite(self, node: gs.Node, model: Model) -> None:
        _rewrite(model.graph, node)
