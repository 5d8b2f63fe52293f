"""ONNX Runtime CPU: uint8 asymmetric activations, int8 symmetric per-channel weights (x86 fast path).

Weight bits follow the CPU that will run the model (``isa.py``): 8 bits with int32 dot products
(VNNI, AMX, ARM); on AVX2 without VNNI, whose u8s8 kernels add pairs of products in a saturating int16,
7 bits ([-64, 64]), widened per output channel as far as the calibrated input ranges cannot saturate
those sums (``weight_limits.py``).

Sigmoid and Mul (SiLU, squeeze-excite) run as QLinearSigmoid/QLinearMul when they sit between int8
nodes: kept float, their Q/DQ made the EfficientNet-like net 1.23× slower than FP32; wrapped, 0.81×.

Embedding tables are int8 per row by default: GatherBlockQuantized dequantizes only the gathered rows
(``tables.py``), so MiniLM's 47 MB word table shrinks 4× at no measurable cost in speed.
"""

import dataclasses

import onnx

from dsqc.op_kinds import COMPUTE_OPS
from dsqc.quant.profile import TargetProfile
from dsqc.quant.spec import QuantPlan

from .float_islands import finish_float_nodes
from .isa import WEIGHT_LIMIT
from .tables import lower_tables
from .weight_limits import fit_weight_limits


def finish_ort_qdq(proto: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """ORT's own QDQ rewrites: FP16 weight storage, the float guard, GatherBlockQuantized tables."""
    return lower_tables(finish_float_nodes(proto, plan), plan)


ONNX_PROFILE = TargetProfile(
    name="onnx",
    activation_dtype="uint8",
    symmetric_activations=False,
    per_channel_weights=True,
    compute_ops=frozenset(COMPUTE_OPS),
    support_ops=frozenset({"Add", "Concat", "AveragePool", "GlobalAveragePool", "Sigmoid", "Mul"}),
    quantize_outputs=True,
    output_q_optional=frozenset({"Gemm", "MatMul"}),
    fold_activations=True,
    weight_limit=WEIGHT_LIMIT["avx2"],
    latency_guard=True,
    float_readers_read_float=True,
    int8_tables=True,
    table_lookups=True,
    fp16_weights=True,
    finish_qdq=finish_ort_qdq,
)


def onnx_profile(isa: str) -> TargetProfile:
    """The onnx profile for a CPU class (``avx2``, ``vnni``, ``arm64``); on ``avx2`` each output channel's
    weights are then widened as far as ORT's int16 pair sums allow (``weight_limits.py``)."""
    fit = fit_weight_limits if isa == "avx2" else None
    return dataclasses.replace(ONNX_PROFILE, weight_limit=WEIGHT_LIMIT[isa], fit_weight_limits=fit)
