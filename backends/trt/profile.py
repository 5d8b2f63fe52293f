"""TensorRT: symmetric int8, Q/DQ on compute-op inputs only, residual Adds quantize their skip input.

TensorRT's explicit quantization fuses DQ → Conv/ConvTranspose/Gemm/MatMul (weights DQ'd per
output channel) and folds the BN/activation after a Conv into the kernel, so no Q/DQ goes on
compute outputs (``quantize_outputs=False``) and nothing is folded into a Q clamp
(``fold_activations=False``: the ReLU stays a node TensorRT fuses). A residual Add gets Q/DQ on
its skip input only, so Conv+Add(+ReLU) becomes one kernel. Layout ops take their input's scale
(the default passthrough set): TensorRT moves DQ forward and Q backward through them.
"""

from dsqc.quant.profile import TargetProfile

TRT_PROFILE = TargetProfile(
    name="trt",
    activation_dtype="int8",
    symmetric_activations=True,
    per_channel_weights=True,
    compute_ops=frozenset({"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}),
    quantize_outputs=False,
    fold_activations=False,
    residual_add_skip_only=True,
    int4_weights=True,
    min_opset=13,
)
