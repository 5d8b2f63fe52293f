"""``TargetProfile``: what a target's int8 runtime can do. The planner obeys it."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from collections.abc import Mapping

    import numpy as np
    import onnx
    import onnx_graphsurgeon as gs

    from dsqc.calibration.data import SampleSet
    from dsqc.ir import Model
    from dsqc.quant.recipe import NodeOptions
    from dsqc.quant.spec import QuantPlan

FinishQDQ = Callable[["onnx.ModelProto", "QuantPlan"], "onnx.ModelProto"]
FloatKernel = Callable[["gs.Node"], str]
FitWeightLimits = Callable[
    ["onnx.ModelProto", "Model", "QuantPlan", "Mapping[str, NodeOptions]", "SampleSet"],
    "dict[str, np.ndarray]"]

# Ops whose data output equals a data input up to layout: their output reuses the input's spec.
PASSTHROUGH_OPS = frozenset({
    "MaxPool", "Reshape", "Transpose", "Flatten", "Squeeze", "Unsqueeze", "Slice", "Gather",
    "Resize", "Split", "Expand", "Tile", "DepthToSpace", "SpaceToDepth", "Pad",
})


@dataclass(frozen=True)
class TargetProfile:
    """Capabilities and rules of one target's integer runtime.

    ``compute_ops``: ops that run in int8 (Q/DQ on their activation inputs, DQ on weights).
    ``support_ops``: ops that run in int8 only when an int8 node reads their output (a residual Add
    feeding a Conv pays; one feeding LayerNorm only adds Q/DQ).
    ``quantize_outputs``: their outputs get a Q too (ORT needs it to fuse Conv → QLinearConv).
    ``output_q_optional``: ops that fuse without an output Q; their graph outputs stay float.
    ``fold_activations``: Relu/Clip after a compute op become the clamp of its output Q.
    ``shared_scale_ops``: all inputs and the output share one scale (TFLite Concat).
    ``fixed_output_specs``: op → (scale, zero point) the runtime imposes (TFLite Softmax).
    ``weight_limit``: int8 weights in [-limit, limit] (64 = 7 bits: x86 u8s8 kernels without VNNI
    add pairs of u8·s8 products in saturating int16, so full 8-bit weights overflow).
    ``fit_weight_limits``: ``(fp32, model, plan, node options, calibration samples)`` → node
    → int8 weight limit per output channel, fitted to the target's kernel on calibration inputs where
    ``weight_limit`` is only the safe bound (ORT on AVX2: as wide as its int16 pair sums allow).
    ``verify_fused``: verify with ORT's fused int8 kernels (the deployment runtime for ``onnx``); other
    targets are verified with ORT's reference Q/DQ semantics (float requantization), since ORT's x86
    u8s8 kernels saturate with full 8-bit weights where the target's kernels do not.
    ``latency_guard``: when the int8 model runs slower than FP32 in the verification runtime, keep
    op types whose int8 kernels lose in FP32 (``compiler/quant/latency_guard.py``).
    ``float_readers_read_float``: float readers of a tensor quantized after a float producer read the
    float tensor instead of a DQ (no fusion to protect; MiniLM 14 → 16 dB). Off where a backend wants
    the DQ (TensorRT's residual-Add skip input).
    ``residual_add_skip_only``: a residual Add quantizes only its skip input; the branch coming
    from a compute op fuses into it (TensorRT's Conv+Add kernel).
    ``fused_matmul_bias``: ``MatMul(x, W) → Add(·, b)`` with a constant [N] bias is one kernel (TFLite
    FULLY_CONNECTED): the Add runs with its MatMul and the output Q goes after the Add, not between.
    ``int8_tables``: Gathers from constant tables (embeddings) are int8 weight-only (per row) by
    default, for runtimes that gather the int8 rows before dequantizing (ORT's GatherBlockQuantized);
    elsewhere a recipe asks for it.
    ``table_lookups``: the lowering takes ``DequantizeLinear → Gather`` of a constant table, so the
    mixed-precision search may make embedding tables weight-only int8/int4.
    ``fp16_weights``: FP16 nodes store their constant inputs as float16 (the search may choose FP16);
    elsewhere an FP16 node runs in FP32, noted in the plan.
    ``integer_only``: the runtime has no float nodes, so the search keeps every node int8.
    ``int16_activations``: the target has int16 × int8 integer kernels: a node may run with int16
    activations (``Precision.INT16``: a recipe asks, or the mixed-precision search chooses it).
    ``eight_bit_inputs``: ops whose activation inputs stay 8-bit where the others are wider (int16
    activations: the integer program's Sigmoid/Tanh are 256-entry tables).
    ``wide_residuals``: a residual Add whose sum a LayerNorm reads (a transformer's residual stream) runs
    with int16 activations where activations are int8 (needs ``int16_activations``): one int8 scale per
    tensor for the stream that carries every layer's output costs ViT-B/32 9 dB on ``hls``
    (tools/bench/COVERAGE.md); there these are 73 of its 504 activation tensors.
    ``int16_headroom``: an int16 tensor covers its calibrated range times this (3 integer bits for 8×):
    int16 has resolution to spare, and unseen inputs run past a calibration range (the squeeze-excitation
    and pooled vectors of a CNN, sampled once per calibration image, by up to 5.7× on held-out photos,
    tools/bench/REAL_NOTES.md), where clipping, not rounding, costs the accuracy.
    ``float_kernel``: why a node of a compute op runs float on this target ('' where it runs int8): an
    int8 kernel the runtime has but runs slower than float (TFLite attention under XNNPACK). A recipe's
    explicit precision wins.
    ``finish_qdq``: the backend's rewrite of the QDQ model for its runtime, run once after Q/DQ
    insertion wherever a plan is built (ORT: FP16 weight storage, the float guard, GatherBlockQuantized
    tables); it may add notes to the plan. ``None``: the QDQ model stays as inserted.
    ``dynamic_refusal``: why the target cannot run activations quantized at run time (``--mode
    dynamic|auto`` is refused with it); empty where it can.
    ``dynamic_scale``: how the target's dynamic kernels measure an activation at run time, which the
    canonical model reproduces: ``"tensor"`` (ORT: one scale for the whole tensor,
    ``DynamicQuantizeLinear``) or ``"row"`` (LiteRT's hybrid kernels: one scale per row of a
    FULLY_CONNECTED input, per image of a CONV_2D input; ``dsqc.quant.run_time_scales``).
    """

    name: str
    activation_dtype: str = "uint8"
    symmetric_activations: bool = False
    per_channel_weights: bool = True
    compute_ops: frozenset[str] = frozenset()
    support_ops: frozenset[str] = frozenset()
    quantize_outputs: bool = True
    output_q_optional: frozenset[str] = frozenset()
    passthrough_ops: frozenset[str] = PASSTHROUGH_OPS
    fold_activations: bool = True
    shared_scale_ops: frozenset[str] = frozenset()
    fixed_output_specs: dict[str, tuple[float, int]] = field(default_factory=dict)
    int4_weights: bool = True
    power_of_two_scales: bool = False
    residual_add_skip_only: bool = False
    fused_matmul_bias: bool = False
    weight_limit: int | None = None
    fit_weight_limits: FitWeightLimits | None = None
    verify_fused: bool = True
    latency_guard: bool = False
    float_readers_read_float: bool = False
    int8_tables: bool = False
    table_lookups: bool = False
    fp16_weights: bool = False
    integer_only: bool = False
    int16_activations: bool = False
    eight_bit_inputs: frozenset[str] = frozenset()
    wide_residuals: bool = False
    int16_headroom: float = 8.0
    finish_qdq: FinishQDQ | None = None
    float_kernel: FloatKernel | None = None
    float_fallback: str = "fp32"
    min_opset: int = 13
    dynamic_refusal: str = ""
    dynamic_scale: str = "tensor"
