"""ONNX Runtime CPU: uint8 asymmetric activations, int8 symmetric per-channel weights (x86 fast path).

Weights use 7 bits ([-64, 64]): ORT's x86 u8s8 kernels without VNNI (AVX2) sum pairs of u8·s8
products in saturating int16; 255·127·2 overflows, 255·64·2 does not. Measured on the MNIST CNN here:
full 8-bit weights gave 18.7 dB output SQNR through the fused kernels against 38 dB emulated.

Sigmoid and Mul (SiLU, squeeze-excite) run as QLinearSigmoid/QLinearMul when they sit between int8
nodes: kept float, their Q/DQ made the EfficientNet-like net 1.23× slower than FP32; wrapped, 0.81×.

Embedding tables are int8 per row by default: GatherBlockQuantized dequantizes only the gathered rows
(``compiler/ort_tables.py``), so MiniLM's 47 MB word table shrinks 4× at no measurable cost in speed.
"""

from dsqc.quant.profile import TargetProfile

ONNX_PROFILE = TargetProfile(
    name="onnx",
    activation_dtype="uint8",
    symmetric_activations=False,
    per_channel_weights=True,
    compute_ops=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul"}),
    support_ops=frozenset({"Add", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "Mul"}),
    quantize_outputs=True,
    output_q_optional=frozenset({"Gemm", "MatMul"}),
    fold_activations=True,
    weight_limit=64,
    latency_guard=True,
    float_readers_read_float=True,
    int8_tables=True,
)
