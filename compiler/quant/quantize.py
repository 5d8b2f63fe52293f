"""The quantizer phases in order: place → calibrate → finalize the plan → insert Q/DQ."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import onnx

from dsqc.calibration.data import SampleSet
from dsqc.calibration.runner import TensorStats, calibrate
from dsqc.ir import Model
from dsqc.model_io import INT4_OPSET, at_least_opset, prepare
from dsqc.op_kinds import CONV_OPS
from dsqc.passes.bias_correction import BiasCorrection
from dsqc.passes.insert_qdq import InsertQDQ
from dsqc.passes.shift_activations import shift_corrections
from dsqc.quant.from_qdq import keep_specs
from dsqc.quant.planner import Placement, Range, finalize, place
from dsqc.quant.profile import PASSTHROUGH_OPS, TargetProfile
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import Precision, QuantPlan, QuantSpec
from dsqc.quant.weights import plan_constants

log = logging.getLogger(__name__)
SHIFT_MARK = "dsqc.shift_bias"  # model metadata: shifted layers' biases refolded with quantized weights


@dataclass
class Quantized:
    model: onnx.ModelProto
    plan: QuantPlan
    placement: Placement
    stats: dict[str, TensorStats]


def quantize_model(fp32: onnx.ModelProto, profile: TargetProfile, recipe: Recipe, samples: SampleSet,
                   batch_size: int = 8, precision: str = "int8",
                   known: dict[str, TensorStats] | None = None,
                   trained: Mapping[str, QuantSpec] | None = None) -> Quantized:
    """FP32 model + calibration samples → the canonical QDQ model and its plan.

    ``known``: statistics from an earlier calibration of the same data; only missing tensors run.
    ``trained``: specs read from an already-quantized model (QAT); they replace the planned ones.
    """
    fp32, model, placement = placed(fp32, profile, recipe, precision)
    log.info("placement: %d activation tensors to calibrate", len(placement.activations))
    stats = calibrate_missing(fp32, placement.activations, recipe, samples, batch_size, known or {})
    ranges = {name: Range(s.lo, s.hi) for name, s in stats.items()}
    plan = finalize_plan(fp32, model, placement, ranges, profile, recipe, None if trained else samples)
    if trained:
        plan = keep_specs(model, placement, plan, trained, profile)
    shifted_weights, shift_means = shift_corrections(model.graph)
    result = InsertQDQ(plan, profile.float_readers_read_float)(model)  # in the active pass context
    if shift_means:  # the shift's bias fold, redone with the quantized weights
        BiasCorrection(shifted_weights, shift_means, mark=SHIFT_MARK)(result.model)
    proto = result.model.to_proto()
    proto.ir_version = fp32.ir_version
    proto = finish_for_target(proto, plan, profile)
    return Quantized(prepare(proto, "quantized model"), plan, placement, stats)


def placed(fp32: onnx.ModelProto, profile: TargetProfile, recipe: Recipe,
           precision: str = "int8") -> tuple[onnx.ModelProto, Model, Placement]:
    """``place`` on ``fp32``, converted to opset 21 first where the recipe asks for int4, or after placing
    where the plan has int16 Q/DQ (then placed again on the converted graph): the model, its IR and the
    placement."""
    if _wants_int4(recipe):
        fp32 = at_least_opset(fp32, INT4_OPSET)
    model = Model.from_proto(fp32)
    placement = place(model, profile, recipe, precision)
    if _wants_int16(placement, profile, recipe):
        upgraded = at_least_opset(fp32, INT4_OPSET)
        if upgraded is not fp32:
            fp32, model = upgraded, Model.from_proto(upgraded)
            placement = place(model, profile, recipe, precision)
    return fp32, model, placement


def finalize_plan(fp32: onnx.ModelProto, model: Model, placement: Placement, ranges: Mapping[str, Range],
                  profile: TargetProfile, recipe: Recipe, samples: SampleSet | None) -> QuantPlan:
    """``finalize``, then the int8 weight limits the target fits to its kernel on ``samples``
    (``profile.fit_weight_limits``; none without samples). Every plan a build measures or writes is made
    here, so the search measures the weights the build writes."""
    plan = finalize(model, placement, ranges, profile, recipe)
    if profile.fit_weight_limits is None or samples is None or not len(samples):
        return plan
    limits = profile.fit_weight_limits(fp32, model, plan, placement.options, samples)
    for node in model.graph.nodes:  # only the widened layers' weight and bias specs change
        if node.name in limits:
            plan_constants(node, plan, placement.options[node.name], profile, limits[node.name])
    return plan


def finish_for_target(proto: onnx.ModelProto, plan: QuantPlan, profile: TargetProfile) -> onnx.ModelProto:
    """The target's own rewrites of the QDQ model (``profile.finish_qdq``). FP16 nodes on a target
    that stores no FP16 weights run in FP32 (noted in the plan)."""
    fp16 = sum(d.precision is Precision.FP16 for d in plan.nodes.values())
    if fp16 and not profile.fp16_weights:
        plan.notes.append(f"{fp16} fp16 node(s) run in fp32: target {profile.name} stores no fp16 weights")
    return profile.finish_qdq(proto, plan) if profile.finish_qdq is not None else proto


def calibrate_missing(fp32: onnx.ModelProto, tensors: list[str], recipe: Recipe, samples: SampleSet,
                      batch_size: int, known: Mapping[str, TensorStats]) -> dict[str, TensorStats]:
    """Statistics of ``tensors``: those in ``known`` reused, the rest calibrated with the recipe's method."""
    options: dict[str, float] = {"percentile": recipe.percentile} if recipe.method == "percentile" else {}
    missing = [name for name in tensors if name not in known]
    stats = {name: known[name] for name in tensors if name in known}
    by_method: dict[str, list[str]] = {}
    for name, method in tensor_methods(fp32, missing, recipe.method).items():
        by_method.setdefault(method, []).append(name)
    for method, names in by_method.items():
        stats.update(calibrate(fp32, names, samples, method=method, batch_size=batch_size, progress=None,
                               **(options if method == recipe.method else {})))
    return stats


def tensor_methods(fp32: onnx.ModelProto, tensors: list[str], method: str) -> dict[str, str]:
    """The range method of each tensor (``select`` here: min/max). Graph inputs hold the data's own
    distribution, often multi-modal (MNIST's background spike): KL clipping cuts the signal off there
    (input range 2.83 → 0.67, 38 → 3 dB), so ``entropy`` and ``auto`` keep their min/max.

    ``auto`` (opt-in; the default is min/max): MSE-optimal clipping for the inputs of convolutions
    (through layout ops and Relu/Clip), whose long post-ReLU tails cost more resolution than clipping
    them does, since the next convolution sums many of them (torchvision ResNet-18 graph: 28.6 vs 27.7
    dB); min/max elsewhere, where single rare values carry the signal: transformer outlier features
    (MiniLM: 15.6 vs 16.0 dB with MSE). Even on conv inputs it can lose: a detector's head maps
    (NudeNet YOLOv8n: box agreement 0.49 vs 0.84 with min/max), hence not the default.
    """
    inputs = {i.name for i in fp32.graph.input}
    if method == "select":  # resolved by the build (``range_select``); elsewhere (analyze, --mode auto)
        method = "minmax"
    if method not in ("entropy", "auto"):
        return dict.fromkeys(tensors, method)
    near_conv = _conv_inputs(fp32.graph) if method == "auto" else set()
    fallback = "minmax" if method == "auto" else method
    return {name: "minmax" if name in inputs else "mse" if name in near_conv else fallback
            for name in tensors}


_SAME_MAP = PASSTHROUGH_OPS | {"Relu", "Clip"}


def _conv_inputs(graph: onnx.GraphProto) -> set[str]:
    """Tensors a Conv reads as its data input, directly or through layout ops and Relu/Clip."""
    readers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            readers.setdefault(name, []).append(node)

    def read_by_conv(name: str, depth: int = 0) -> bool:
        for node in readers.get(name, []):
            if node.input[0] != name:
                continue
            if node.op_type in CONV_OPS:
                return True
            through = node.op_type in _SAME_MAP and node.output and depth < 8
            if through and read_by_conv(node.output[0], depth + 1):
                return True
        return False

    names = {o for n in graph.node for o in n.output} | {i.name for i in graph.input}
    return {name for name in names if read_by_conv(name)}


def _wants_int16(placement: Placement, profile: TargetProfile, recipe: Recipe) -> bool:
    """int16 activations, everywhere or on some nodes (precision int16, or a wide residual stream):
    QuantizeLinear takes int16 from opset 21 (the same opset as int4)."""
    wide = any(d.wide for d in placement.decisions.values())
    return wide or (recipe.activation_dtype or profile.activation_dtype) == "int16"


def _wants_int4(recipe: Recipe) -> bool:
    tables = [recipe.op_types.values(), (o.options for o in recipe.overrides)]
    asked = any(t.get("weight_dtype") == "int4" or t.get("precision") == "int4" for ts in tables for t in ts)
    return asked or recipe.weight_dtype == "int4"
