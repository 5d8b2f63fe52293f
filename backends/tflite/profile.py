"""TFLite int8 (LiteRT / XNNPACK): int8 asymmetric activations, int8 symmetric per-channel weights.

The rules come from the TFLite quantization spec (FACTS.md): ops that move integers share their
input's scale and zero point; SOFTMAX/LOGISTIC output (1/256, −128) and TANH (1/128, 0) are fixed;
weights are int8 in [-127, 127] with zero point 0, biases int32 with scale s_in·s_w.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from dsqc.ir import constant_value
from dsqc.quant.profile import PASSTHROUGH_OPS, TargetProfile

if TYPE_CHECKING:
    import onnx_graphsurgeon as gs

# int8 kernels LiteRT has but its XNNPACK delegate does not take (LiteRT 2.3): each splits the delegated
# graph, which costs more than the float op between DEQUANTIZE and QUANTIZE. Small transformer on the Xeon
# (VNNI): int8 1.96x faster with them float; MiniLM: 1.21x slower than float32 -> 1.25x faster.
XNNPACK_NO_INT8 = {
    "BATCH_MATMUL": "BATCH_MATMUL of two activations: XNNPACK has no int8 kernel (float_undelegated)",
    "SOFTMAX": "SOFTMAX: XNNPACK has no int8 kernel (float_undelegated)",
}

TFLITE_PROFILE = TargetProfile(
    name="tflite",
    activation_dtype="int8",
    symmetric_activations=False,
    per_channel_weights=True,
    compute_ops=frozenset({
        "Conv", "ConvTranspose", "Gemm", "MatMul", "Concat",
        "AveragePool", "GlobalAveragePool", "ReduceMean", "Softmax", "Sigmoid", "Tanh", "HardSwish",
        "Relu", "Gelu", "Resize",
    }),
    # Add/Sub/Mul run in int8 only where an int8 node reads them (a CNN's residual, SiLU's Mul): a
    # transformer's residual Add feeding LayerNorm holds outlier channels (MiniLM: -8..224) that one
    # int8 scale turns into noise (layer-0 output 6 dB); float readers read the float tensor.
    support_ops=frozenset({"Add", "Sub", "Mul"}),
    float_readers_read_float=True,
    quantize_outputs=True,
    output_q_optional=frozenset(),
    passthrough_ops=PASSTHROUGH_OPS,
    fold_activations=True,
    verify_fused=False,
    shared_scale_ops=frozenset({"Concat", "AveragePool", "MaxPool", "Reshape", "Squeeze", "Transpose", "Pad",
                                "Gather", "Slice", "Resize", "Max", "Min"}),
    fixed_output_specs={"Softmax": (1.0 / 256.0, -128), "Sigmoid": (1.0 / 256.0, -128),
                        "Tanh": (1.0 / 128.0, 0)},
    int4_weights=False,
    residual_add_skip_only=False,
    fused_matmul_bias=True,
    dynamic_scale="row",
)


def xnnpack_float_kernel(node: gs.Node) -> str:
    """Why ``node`` runs float under XNNPACK ('' where its int8 kernel is delegated)."""
    if node.op == "Softmax":
        return XNNPACK_NO_INT8["SOFTMAX"]
    if node.op == "MatMul" and all(constant_value(t) is None for t in node.inputs):
        return XNNPACK_NO_INT8["BATCH_MATMUL"]
    return ""


def tflite_profile(float_undelegated: bool, io: str = "float") -> TargetProfile:
    """The profile for ``-B float_undelegated``: XNNPACK's missing int8 kernels planned float, or int8 (for
    runtimes that run every op in int8: accelerators, int8-only delegates). LiteRT's hybrid kernels
    (``--mode dynamic``, and repair's dynamic build) compute in float between float tensors, so they are
    refused where the options ask for an all-int8 file or int8 model inputs and outputs."""
    profile = dataclasses.replace(TFLITE_PROFILE, float_kernel=xnnpack_float_kernel) if float_undelegated \
        else TFLITE_PROFILE
    asked = "-B float_undelegated=false (every op in int8)" if not float_undelegated else \
        "-B io=int8 (int8 model inputs and outputs)" if io == "int8" else ""
    if not asked:
        return profile
    why = f"{asked} asks for what LiteRT's hybrid kernels are not: they take and give float tensors"
    return dataclasses.replace(profile, dynamic_refusal=why)
