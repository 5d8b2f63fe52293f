"""The build's quantize + verify phases for ``--mode dynamic`` and ``--mode auto``.

``dynamic``: no calibration; every MatMul/Gemm/Conv with a constant weight gets int8 per-channel weights
and run-time activation quantization (``dsqc.quant.dynamic``). Verification runs against FP32 on
``--eval-data`` or, when only ``--calib`` is given, its held-out split (as in static mode); with no data
at all the build is written and says it is UNVERIFIED (no number is made up).
``auto``: the static calibrated plan, then per node static or dynamic from a measurement on the
calibration samples (``dsqc.quant.dynamic_auto``).
"""

from __future__ import annotations

import dataclasses
import logging
import re
from collections.abc import Callable
from typing import Any

import onnx

from dsqc.backends.registry import Backend, Lowered, LoweringJob
from dsqc.calibration.data import SampleSet, fixed_batch, load_samples, model_inputs
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.errors import CalibrationError, GateError, UnsupportedError
from dsqc.quant.boosters import BoosterOptions, apply_boosters
from dsqc.quant.dynamic import MODES, Candidate, candidates, insert_dynamic
from dsqc.quant.dynamic_auto import choose_modes
from dsqc.quant.profile import TargetProfile
from dsqc.quant.quantize import Quantized, quantize_model
from dsqc.quant.recipe import Override, Recipe
from dsqc.quant.spec import NodeDecision, Precision
from dsqc.verify import Verification, verify

log = logging.getLogger(__name__)
UNVERIFIED = ("UNVERIFIED: dynamic mode without --eval-data or --calib; no held-out data, so the build was "
              "not compared against FP32 (give --eval-data DATA to verify)")


def resolve_mode(request: BuildRequest, recipe: Recipe, profile: TargetProfile) -> str:
    """``--mode`` (else the recipe's ``quantization.mode``), refused where the target cannot run it."""
    mode = request.mode or recipe.mode
    if mode not in MODES:
        raise UnsupportedError(f"--mode {mode}: choose one of {', '.join(MODES)}")
    if mode != "static" and request.precision == "fp32":
        raise UnsupportedError(f"--mode {mode} quantizes; it does not combine with --precision fp32")
    if mode != "static" and profile.dynamic_refusal:
        raise UnsupportedError(f"--mode {mode} is not available for --target {request.target}: "
                               f"{profile.dynamic_refusal}; use --mode static")
    if mode == "auto" and not request.calib:
        raise CalibrationError("--mode auto compares calibrated static against dynamic per node: it needs "
                               "--calib DATA (or use --mode dynamic, which needs none)")
    if mode != "static" and request.accuracy_budget:
        raise UnsupportedError(f"--mode {mode} does not combine with --accuracy-budget (static mixed "
                               "precision); drop one of the two")
    return mode


def eval_set(request: BuildRequest, fp32: onnx.ModelProto, loaded: tuple[SampleSet, SampleSet] | None
             ) -> tuple[SampleSet | None, SampleSet | None]:
    """(calibration set or None, held-out set or None) for a dynamic/auto build: ``loaded`` is the
    pipeline's (calibration, held-out) pair when ``--calib`` was given."""
    if loaded is not None:
        return loaded
    if not request.eval_data:
        return None, None
    inputs = model_inputs(fp32)
    held = load_samples(request.eval_data, inputs, request.eval_samples, None, purpose="eval")
    return None, held.for_model_batch(fixed_batch(inputs), "evaluation")


def quantize_dynamic_mode(source: onnx.ModelProto, mode: str, profile: TargetProfile, recipe: Recipe,
                          calib: SampleSet | None, request: BuildRequest, result: BuildResult) -> Quantized:
    """The canonical model of a dynamic or auto build, with its plan; choices go to ``result.metrics``."""
    info: dict[str, Any] = {"mode": mode}
    result.metrics["dynamic"] = info
    if mode == "dynamic":
        base = _tables_only(source, profile, recipe)
        plan = base.plan
        ops = {n.name: n.op_type for n in source.graph.node}
        for name, decision in list(plan.nodes.items()):
            if decision.precision is Precision.FP32:
                kept = recipe.options_for(name, ops[name]).precision is Precision.FP32
                why = "recipe keeps it in fp32" if kept else \
                    f"{ops[name]}: no dynamic int8 kernel (dynamic mode quantizes MatMul/Gemm/Conv weights)"
                plan.nodes[name] = NodeDecision(Precision.FP32, why)
        chosen = [c for c in candidates(base.model) if recipe.options_for(c.node, c.op).precision
                  is not Precision.FP32]
        model = insert_dynamic(base.model, chosen, plan, per_tensor=_per_tensor(chosen, recipe),
                               activation_scale=profile.dynamic_scale)
        info["nodes"] = {c.node: {"op": c.op, "mode": "dynamic"} for c in chosen}
        return Quantized(model, plan, base.placement, {})
    assert calib is not None
    static = quantize_model(source, profile, recipe, calib, request.calib_batch)
    choices = choose_modes(source, static.plan, calib, fused_biases=static.placement.fused_biases,
                           activation_scale=profile.dynamic_scale)
    info["nodes"] = {c.node: c.to_dict() for c in choices}
    dynamic = {c.node: c for c in choices if c.mode == "dynamic"}
    if not dynamic:
        for c in choices:
            static.plan.nodes[c.node] = NodeDecision(Precision.INT8, c.reason)
        return static
    keep_float = [Override(re.compile(re.escape(name)), {"precision": "fp32"}) for name in dynamic]
    narrowed = dataclasses.replace(recipe, overrides=[*recipe.overrides, *keep_float])
    mixed = quantize_model(source, profile, narrowed, calib, request.calib_batch, known=static.stats)
    picked = [c for c in candidates(mixed.model) if c.node in dynamic]
    missing = set(dynamic) - {c.node for c in picked}
    if missing:
        log.warning("auto mode: %d node(s) lost their constant weight in the static model: %s", len(missing),
                    ", ".join(sorted(missing)))
    mixed.model = insert_dynamic(mixed.model, picked, mixed.plan, {n: c.reason for n, c in dynamic.items()},
                                 _per_tensor(picked, recipe), profile.dynamic_scale)
    for c in choices:
        if c.mode == "static" and mixed.plan.precision_of(c.node) is Precision.INT8:
            mixed.plan.nodes[c.node] = NodeDecision(Precision.INT8, c.reason)
    return mixed


def single_samples(held: SampleSet, model: onnx.ModelProto) -> list[dict[str, Any]]:
    """Held-out feeds one request at a time (the run-time scale is per request), unless the model fixes
    its batch size."""
    batch = fixed_batch(model_inputs(model)) or 1
    return list(held.batches(batch))


def run_dynamic(mode: str, request: BuildRequest, backend: Backend, job: LoweringJob, recipe: Recipe,
                result: BuildResult, clock: Callable[[str], Any],
                loaded: tuple[SampleSet, SampleSet] | None) -> tuple[Verification | None, Lowered]:
    """Plan (and for ``auto`` calibrate), fill ``job``, lower it once, verify when there is held-out data."""
    fp32 = job.fp32
    profile = backend.profile_for(job.options)
    calib, held = eval_set(request, fp32, loaded)
    if held is None and (request.min_sqnr is not None or request.max_drop is not None or request.strict):
        raise GateError("--min-sqnr/--max-drop/--strict need verification: give --eval-data DATA")
    source = fp32
    boosters = BoosterOptions.from_dict(recipe.boosters, recipe.source).resolved(False)
    if boosters.fp32_side and calib is None:
        raise CalibrationError(f"{recipe.source}: [boosters] cle/smoothquant measure activations: give "
                               "--calib DATA, or drop them for a dynamic build without data")
    if calib is not None and boosters.fp32_side:
        with clock("boosters"):  # CLE / SmoothQuant: the same function; per-tensor run-time scales gain most
            source = apply_boosters(fp32, calib, boosters, request.calib_batch)
    result.metrics["boosters"] = {"cle": boosters.cle, "smoothquant": boosters.smoothquant,
                                  "note": "dynamic/auto: only the FP32 rewrites (CLE, SmoothQuant)"}
    with clock("calibrate+plan" if mode == "auto" else "plan"):
        quantized = quantize_dynamic_mode(source, mode, profile, recipe, calib, request, result)
    result.warnings.extend(f"recipe regex '{r}' matched no node" for r in recipe.unmatched())
    result.plan, job.qdq, job.plan = quantized.plan, quantized.model, quantized.plan
    info = result.metrics["dynamic"]
    info["verified"] = held is not None
    if calib is not None:
        method = recipe.method if mode == "auto" else "no ranges (activations quantized at run time)"
        result.metrics["calibration"] = {"source": calib.source, "samples": len(calib),
                                         "method": method, "synthetic": calib.synthetic}
    if held is not None:
        job.eval_feeds = single_samples(held, fp32)
        job.eval_labels, job.measure_latency = held.labels, request.measure_latency
    with clock("lower"):  # once: verification and the written artifacts share it
        lowered = backend.lower(job)
    if held is None:
        result.warnings.append(UNVERIFIED)
        return None, lowered
    with clock("verify"):
        verification = verify(fp32, backend.verified_model(lowered), job.eval_feeds, held.labels,
                              request.task_metric, latency=request.measure_latency and profile.verify_fused,
                              fused=profile.verify_fused, mask_padding=recipe.mask_padding)
    result.metrics["verification"] = verification.to_dict()
    info["eval_source"], info["eval_samples"] = held.source, len(held)
    return verification, lowered

def _tables_only(source: onnx.ModelProto, profile: TargetProfile, recipe: Recipe) -> Quantized:
    """The static planner with every op but Gather kept float: constant embedding tables become int8
    weight-only where the target gathers int8 rows (``onnx``: GatherBlockQuantized, as in static mode);
    no activation is quantized, so no calibration data is needed."""
    ops = {n.op_type for n in source.graph.node}
    tables = dataclasses.replace(recipe, exclude_ops=set(recipe.exclude_ops) | (ops - {"Gather"}))
    return quantize_model(source, profile, tables, SampleSet(feeds={}, source="no data"))


def _per_tensor(chosen: list[Candidate], recipe: Recipe) -> set[str]:
    """Nodes whose recipe options turn per-channel weights off (``per_channel = false``)."""
    return {c.node for c in chosen if not recipe.options_for(c.node, c.op).per_channel}
