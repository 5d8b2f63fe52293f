"""What dsqc knows about ONNX op types, in one place.

Which ops are Q/DQ, which carry a weight (input 1) and a bias (input 2), and which axis of a weight
indexes output channels or is reduced over. Every function takes an onnx-graphsurgeon ``gs.Node``
or an ``onnx.NodeProto`` alike, so the core, the passes and the backends share one answer.

Weights, by op (``rank`` is the weight's rank; Gemm's and MatMul's weight is ``B`` in ``A·B``):

==============  =====================  =============  ==================  ==========================
op              weight shape           output axis    reduction axis      data input channel axis
==============  =====================  =============  ==================  ==========================
Conv            [M, C/group, k...]     0              1 (and k...)        1
ConvTranspose   [C, M/group, k...]     1 (per group)  0 (and k...)        1
Gemm            [K, N] / [N, K] transB 1 / 0          0 / 1               1, or 0 with transA
MatMul          [..., K, N]            rank - 1       rank - 2            -1
==============  =====================  =============  ==================  ==========================
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeAlias

import onnx
import onnx_graphsurgeon as gs
from onnx import helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
CONV_OPS = ("Conv", "ConvTranspose")
# Matrix products whose weight is a [K, N] matrix: int4 blockwise weights (along K) apply to these.
MATRIX_OPS = ("Gemm", "MatMul")
# Ops that accumulate weight · input (int32 accumulators when quantized); the weight is input 1.
COMPUTE_OPS = (*CONV_OPS, *MATRIX_OPS)
# Compute ops with an optional bias input 2 (Gemm's ``C``).
BIASED_OPS = ("Conv", "ConvTranspose", "Gemm")
WEIGHT_INPUT = dict.fromkeys(COMPUTE_OPS, 1)
BIAS_INPUT = dict.fromkeys(BIASED_OPS, 2)
# Ops that compute each output element from the same-position elements of their inputs (constants
# broadcast): a chain of them applied to one int8 tensor, with scalar constants, is a function of each
# int8 code alone, which an integer target tabulates (GELU's Div → Erf → Add → Mul → Mul).
ELEMENTWISE_OPS = frozenset({
    "Abs", "Add", "Clip", "Div", "Elu", "Erf", "Exp", "Gelu", "HardSigmoid", "HardSwish", "LeakyRelu", "Log",
    "Mish", "Mul", "Neg", "Pow", "Reciprocal", "Relu", "Selu", "Sigmoid", "Softplus", "Softsign", "Sqrt",
    "Sub", "Tanh",
})

Node: TypeAlias = gs.Node | onnx.NodeProto


def op_type(node: Node) -> str:
    return node.op_type if isinstance(node, onnx.NodeProto) else str(node.op)


def attr(node: Node, name: str, default: Any = 0) -> Any:
    """Attribute ``name`` of ``node`` (``default`` when absent)."""
    if isinstance(node, onnx.NodeProto):
        found = next((a for a in node.attribute if a.name == name), None)
        return default if found is None else helper.get_attribute_value(found)
    return node.attrs.get(name, default)


def _weight_axes(node: Node, rank: int) -> tuple[int, int]:
    """(output axis, reduction axis) of a compute op's weight; see the table in the module doc."""
    op = op_type(node)
    if op == "Conv":
        return 0, 1
    if op == "ConvTranspose":
        return 1, 0
    if op == "Gemm":
        return (0, 1) if int(attr(node, "transB", 0)) else (1, 0)
    if op == "MatMul":
        return rank - 1, rank - 2
    raise ValueError(f"{op} has no weight")


def weight_output_axis(node: Node, rank: int = 2) -> int:
    """Axis of the weight (input 1) of a compute op that indexes output channels: Conv 0,
    ConvTranspose 1 (within each group), Gemm 0 with transB else 1, MatMul ``rank - 1``.
    The per-channel quantization axis of the weight."""
    return _weight_axes(node, rank)[0]


def weight_reduction_axis(node: Node, rank: int = 2) -> int:
    """Axis of the weight (input 1) that runs along the input channels (K) the op sums over:
    Conv 1, ConvTranspose 0 (Convs also sum over the kernel axes 2...), Gemm 1 with transB else 0,
    MatMul ``rank - 2``. The axis int4 blocks run along."""
    return _weight_axes(node, rank)[1]


def output_channels(node: Node, weight_shape: Sequence[int]) -> int:
    """How many output channels a compute op with this weight shape writes (ConvTranspose: × group)."""
    channels = int(weight_shape[weight_output_axis(node, len(weight_shape))])
    return channels * int(attr(node, "group", 1)) if op_type(node) == "ConvTranspose" else channels


def input_channels(node: Node, weight_shape: Sequence[int]) -> int:
    """How many channels of its data input a compute op with this weight shape reads (Conv: × group)."""
    channels = int(weight_shape[weight_reduction_axis(node, len(weight_shape))])
    return channels * int(attr(node, "group", 1)) if op_type(node) == "Conv" else channels


def is_matmul_bias(weight_shape: Sequence[int], bias_shape: Sequence[int]) -> bool:
    """Whether a constant of ``bias_shape`` added to ``MatMul(x, W)`` (``W`` 2-D) is its per-column bias:
    one value per output column, ``[N]`` or ``[1, …, N]``. The planner (``fused_matmul_bias``) and the
    tflite lowering (FULLY_CONNECTED with its bias) must agree on this, so both ask here."""
    if len(weight_shape) != 2 or not bias_shape:
        return False
    size = 1
    for d in bias_shape:
        size *= int(d)
    return size == int(weight_shape[1]) == int(bias_shape[-1])


def data_channel_axis(node: Node) -> int:
    """Axis of the data input (input 0) that the weight reduces over: Conv/ConvTranspose 1 (NCHW),
    Gemm 1 (0 with transA), MatMul the last."""
    op = op_type(node)
    if op == "MatMul":
        return -1
    if op == "Gemm" and int(attr(node, "transA", 0)):
        return 0
    return 1


def ceil_mode_pads(hw: Sequence[int], kernel: Sequence[int], strides: Sequence[int],
                   pads: Sequence[int]) -> tuple[int, int, int, int]:
    """Pooling with ``ceil_mode=1`` as floor-mode pooling: ``pads`` ([top, left, bottom, right]) with the
    end pads grown to take ONNX's last, partial window (a window that would start in the end padding
    is dropped, as ONNX does). Exact for max pooling when the padding holds the lowest value."""
    grown = [int(p) for p in pads]
    for i in range(2):
        span = hw[i] + pads[i] + pads[i + 2] - kernel[i]
        out = -(-span // strides[i]) + 1
        if (out - 1) * strides[i] >= hw[i] + pads[i]:
            out -= 1
        grown[i + 2] += max(0, (out - 1) * strides[i] - span)
    return grown[0], grown[1], grown[2], grown[3]
