"""TFLite int8 (LiteRT / XNNPACK): int8 asymmetric activations, int8 symmetric per-channel weights.

The rules come from the TFLite quantization spec (FACTS.md): ops that move integers share their
input's scale and zero point; SOFTMAX/LOGISTIC output (1/256, −128) and TANH (1/128, 0) are fixed;
weights are int8 in [-127, 127] with zero point 0, biases int32 with scale s_in·s_w.
"""

from dsqc.quant.profile import PASSTHROUGH_OPS, TargetProfile

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
)
