"""TensorRT: symmetric int8, Q/DQ on compute-op inputs only, no Q/DQ between a Conv and what it folds.

TensorRT's explicit quantization fuses DQ → Conv/ConvTranspose/Gemm/MatMul (weights DQ'd per
output channel) and folds the BN/activation after a Conv into the kernel, so no Q/DQ goes on
compute outputs (``quantize_outputs=False``) and nothing is folded into a Q clamp
(``fold_activations=False``: the ReLU stays a node TensorRT fuses). Layout ops take their input's
scale (the default passthrough set): TensorRT moves DQ forward and Q backward through them.

``Add`` is not a compute op here. With it, the planner quantizes every Add, and a transformer's
residual Adds (no Conv to fuse into) get Q/DQ pairs TensorRT can only run as reformats. Without
it nothing is lost for CNNs: a residual's skip tensor is also the input of the next Conv, so it
is quantized anyway and its Add reads it through a DQ (checked on the ResNet, MobileNetV2 and
EfficientNet zoo models: identical graphs). ``residual_add_skip_only`` still applies when a
recipe asks for int8 Adds. The planner change that would let Add back in: treat an Add as int8
only when one input comes from an int8 Conv/ConvTranspose.
"""

from dsqc.op_kinds import COMPUTE_OPS
from dsqc.quant.profile import TargetProfile

TRT_PROFILE = TargetProfile(
    name="trt",
    activation_dtype="int8",
    symmetric_activations=True,
    per_channel_weights=True,
    compute_ops=frozenset(COMPUTE_OPS),
    quantize_outputs=False,
    fold_activations=False,
    residual_add_skip_only=True,
    int4_weights=True,
    min_opset=13,
    verify_fused=False,
    dynamic_refusal="TensorRT has no dynamic activation quantization in Q/DQ form (its INT8 activation "
                    "scales are constants fixed when the engine is built)",
)
