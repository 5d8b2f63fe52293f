"""The ``hls`` target: int8 asymmetric activations, int8 symmetric per-channel weights, int32 biases.

Asymmetric int8 (not uint8) so that one signed 8-bit datapath serves every tensor and ReLU/ReLU6 fold
into the output clamp (zero point −128 for a ReLU output). ``power_of_two_scales`` makes every scale a
power of two, so requantization is a shift (``HLS_POW2_PROFILE``; ``backend_options``
``power_of_two_scales=true``). Concat inputs share the output's scale: the concat is a copy.
``activation_bits=16`` makes activations int16 (16×8-bit MACs, int64 accumulators where int32 could
overflow): the FPGA trades activation memory for precision where int8 activations lose too much.
A transformer's residual stream (the Adds a LayerNorm reads) is int16 by default: ``residual_bits=8``
keeps it int8.
"""

from dataclasses import replace

from dsqc.quant.profile import TargetProfile

HLS_COMPUTE_OPS = frozenset({
    "Conv", "Gemm", "MatMul", "Add", "Concat", "AveragePool", "GlobalAveragePool", "Relu", "Clip",
    "Mul", "Sigmoid", "Tanh",  # squeeze-excitation gates and SiLU: a 256-entry table and an int8 product
    "Softmax",  # an exp table of code differences; its input quantized after any bias or mask Add
})

HLS_PROFILE = TargetProfile(
    name="hls",
    activation_dtype="int8",
    symmetric_activations=False,
    per_channel_weights=True,
    compute_ops=HLS_COMPUTE_OPS,
    quantize_outputs=True,
    output_q_optional=frozenset(),
    passthrough_ops=frozenset({"MaxPool", "Reshape", "Flatten", "Transpose", "Slice", "Squeeze", "Unsqueeze",
                               "Gather", "Split", "Resize"}),
    fold_activations=True,
    verify_fused=False,
    shared_scale_ops=frozenset({"Concat"}),
    int4_weights=False,
    power_of_two_scales=False,
    integer_only=True,
    fused_matmul_bias=True,  # a Linear's bias Add is its DenseOp's int32 bias, no requantization between
    int16_activations=True,
    eight_bit_inputs=frozenset({"Sigmoid", "Tanh", "Softmax"}),  # the integer program's 256-entry tables
    wide_residuals=True,  # a transformer's residual stream int16 (``residual_bits=8`` keeps it int8)
    dynamic_refusal="HLS needs static scales (the generated integer C requantizes with constant "
                    "multipliers and shifts; it computes no ranges at run time)",
)

HLS_POW2_PROFILE = replace(HLS_PROFILE, power_of_two_scales=True)


def hls_profile(activation_bits: int = 8, power_of_two_scales: bool = False,
                residual_bits: int = 16) -> TargetProfile:
    """The profile for the backend options: ``activation_bits=16`` makes every activation int16 (weights
    still int8) but a Sigmoid/Tanh input, the 256-entry tables' domain; ``residual_bits=8`` keeps a
    transformer's residual stream int8 too."""
    base = HLS_POW2_PROFILE if power_of_two_scales else HLS_PROFILE
    if residual_bits == 8:
        base = replace(base, wide_residuals=False)
    return base if activation_bits == 8 else replace(base, activation_dtype="int16")
