"""Fold ``Add(op(x), constant)`` into the bias of a Conv, ConvTranspose or Gemm."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model, constant_value, only_consumer, producer, set_constant_input, static_shape
from dsqc.op_kinds import BIASED_OPS, output_channels
from dsqc.pass_infra import NodeRewritePass

PRODUCERS = BIASED_OPS
NO_MATCH = f"not Add({'/'.join(PRODUCERS)}, constant)"


@dataclass(frozen=True)
class _Fold:
    add: gs.Node
    node: gs.Node
    per_channel: np.ndarray  # the Add's constant as one value per output channel (float64)
    dtype: np.dtype


def _layout(node: gs.Node) -> tuple[int, int] | str:
    """``(output rank, output channels)`` of ``node`` from its weight's static shape."""
    weight = static_shape(node.inputs[1])
    if weight is None:
        return f"shape of weight {node.inputs[1].name} is unknown"
    return (2 if node.op == "Gemm" else len(weight)), output_channels(node, weight)


def _per_channel(const: np.ndarray, rank: int, channels: int) -> np.ndarray | str:
    """``const`` as a [channels] vector when adding it only varies along axis 1 of a rank-``rank``
    output (so the output shape is unchanged), else the reason it does not."""
    if const.ndim > rank:
        return f"constant of rank {const.ndim} broadcasts the rank-{rank} output"
    full = const.reshape((1,) * (rank - const.ndim) + const.shape)
    for axis, size in enumerate(full.shape):
        if size != 1 and not (axis == 1 and size == channels):
            return f"constant of shape {const.shape} is not per-channel on axis 1 of rank {rank}"
    index = (0, slice(None)) + (0,) * (rank - 2)
    return np.broadcast_to(full[index].astype(np.float64), (channels,))


def _bias_refusal(node: gs.Node) -> str | None:
    if len(node.inputs) < 3 or node.inputs[2].is_empty():
        return None
    bias = node.inputs[2]
    if constant_value(bias) is None:
        return f"bias {bias.name} is not constant"
    if len(bias.outputs) != 1:
        return f"bias {bias.name} is shared"
    return None


def _operands(add: gs.Node) -> tuple[gs.Tensor, gs.Node, np.ndarray] | None:
    """``(y, producer of y, constant)`` when ``add`` is ``Add(y, c)`` or ``Add(c, y)``."""
    if len(add.inputs) != 2:
        return None
    for side in (0, 1):
        y, const = add.inputs[side], constant_value(add.inputs[1 - side])
        node = producer(y)
        if const is not None and node is not None and node.op in PRODUCERS:
            return y, node, const
    return None


def match(graph: gs.Graph, add: gs.Node) -> _Fold | str:
    """Pattern and check: the fold for ``add``, or the reason it is refused."""
    operands = _operands(add)
    if operands is None:
        return NO_MATCH
    y, node, const = operands
    if not only_consumer(graph, y, add):
        return f"{y.name} has other readers or is a graph output"
    if not np.issubdtype(const.dtype, np.floating):
        return f"constant dtype {const.dtype} is not floating point"
    layout = _layout(node)
    if isinstance(layout, str):
        return layout
    per_channel = _per_channel(const, *layout)
    if isinstance(per_channel, str):
        return per_channel
    reason = _bias_refusal(node)
    return reason or _Fold(add, node, per_channel, const.dtype)


def _rewrite(graph: gs.Graph, fold: _Fold) -> None:
    node = fold.node
    has_bias = len(node.inputs) > 2 and not node.inputs[2].is_empty()
    bias = np.asarray(constant_value(node.inputs[2]), np.float64) if has_bias else np.zeros(1)
    if node.op == "Gemm":
        # Y = alpha*A'B' + beta*C + d  ==  alpha*A'B' + 1*(beta*C + d)
        bias = bias * (float(node.attrs.get("beta", 1.0)) if has_bias else 0.0)
        node.attrs["beta"] = 1.0
    new_bias = (bias + fold.per_channel).astype(fold.dtype)
    set_constant_input(graph, node, 2, new_bias, f"{node.name}_bias")
    y = fold.add.outputs[0]
    fold.add.inputs.clear()
    fold.add.outputs.clear()
    node.outputs[0] = y


class FoldAddIntoBias(NodeRewritePass):
    """Fold ``Add(op(x, W[, b]), c)`` (either operand order) into op's bias, op in Conv,
    ConvTranspose and Gemm, when c is a floating constant whose broadcast varies only along the
    output's channel axis 1: shape [], [1], [C,1,1] or [1,C,1,1] for a rank-4 Conv output, [C] or
    [1,C] for Gemm's [M, C]. A bias is created when missing; Gemm's ``beta`` is folded into C.

    Refuses when op's output has other readers or is a graph output, the bias is not constant or
    is read by another node, the weight's shape is unknown, or c would broadcast along another
    axis — a [C] constant on a rank-4 Conv output adds along the last (width) axis, not channels.
    """

    op_types = frozenset({"Add"})
    quiet_refusals = frozenset({NO_MATCH})

    def refusal(self, node: gs.Node, model: Model) -> str | None:
        fold = match(model.graph, node)
        return fold if isinstance(fold, str) else None

    def rewrite(self, node: gs.Node, model: Model) -> None:
        fold = match(model.graph, node)
        assert not isinstance(fold, str)
        _rewrite(model.graph, fold)
