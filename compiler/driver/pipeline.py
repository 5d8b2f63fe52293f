"""The one place that states the compiler's order:

load ─► normalize ─► calibrate ─► plan ─► insert Q/DQ ─► verify ─► lower(target) ─► write ─► report
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx

from dsqc.autoprec.mixed_precision import AutoPlan, check_request, choose_precisions
from dsqc.backends.registry import LoweringJob, get_backend
from dsqc.calibration.data import ImagePreprocess, SampleSet, fixed_batch, load_samples, model_inputs
from dsqc.driver import bundle
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.bundle_output import check_bundle_target, staged_bundle
from dsqc.driver.dynamic_phase import UNVERIFIED, resolve_mode, run_dynamic
from dsqc.driver.report import float_nodes, speed_warnings, write_report
from dsqc.driver.shared_stages import SharedStages
from dsqc.driver.verdict import Thresholds, Verdict, advice, judge
from dsqc.errors import CalibrationError, GateError, RecipeError
from dsqc.ir import Model
from dsqc.model_io import load_model, prepare
from dsqc.pass_infra import FixedPoint, PassContext, PassManager, Step, TimingInstrument, current_context
from dsqc.passes import (
    BatchNormToMulAdd,
    EliminateDeadCode,
    EliminateIdentity,
    FoldAddIntoBias,
    FoldConstants,
    FoldPadIntoConv,
    FuseConvBatchNorm,
    SimplifyReshapeTranspose,
)
from dsqc.quant.boosters import BoosterOptions, apply_boosters, correct_biases
from dsqc.quant.from_qdq import check_trained, has_qdq, split_qdq, trained_stats
from dsqc.quant.latency_guard import guard_latency
from dsqc.quant.profile import TargetProfile
from dsqc.quant.quantize import Quantized, quantize_model
from dsqc.quant.recipe import Recipe, load_recipe
from dsqc.quant.rounding import learn_rounding
from dsqc.quant.spec import QuantSpec
from dsqc.verify import Verification, check_gates, latency_sample, verify

log = logging.getLogger(__name__)


def normalization_steps() -> list[Step]:
    """FP32 clean-up and fusion, exact to float rounding. Edit the order here and only here."""
    return [
        FoldConstants(),
        FixedPoint([
            EliminateIdentity(),
            EliminateDeadCode(),
            SimplifyReshapeTranspose(),
            FoldPadIntoConv(),
            FuseConvBatchNorm(),
            FoldAddIntoBias(),
            BatchNormToMulAdd(),
            FoldConstants(),
        ], name="cleanup"),
        EliminateDeadCode(),
    ]


@dataclass
class NormalizeResult:
    model: onnx.ModelProto
    pass_seconds: dict[str, float] = field(default_factory=dict)
    trained: dict[str, QuantSpec] = field(default_factory=dict)  # specs of an already-quantized input


def normalize(proto: onnx.ModelProto, label: str = "model") -> NormalizeResult:
    """Run the FP32 normalization pipeline (in the active pass context) and re-validate the result."""
    timing = TimingInstrument()
    model = Model.from_proto(proto)
    result = PassManager(normalization_steps(), [timing]).run(model)
    out = result.model.to_proto()
    out.ir_version = proto.ir_version
    return NormalizeResult(prepare(out, f"{label} (normalized)"), timing.seconds)


def load_for_build(path: Path) -> NormalizeResult:
    """The normalized FP32 model and, for an already-quantized QDQ model (a QAT export), the specs of
    its Q/DQ (``dsqc.quant.from_qdq``): the model under them is what gets normalized and re-planned."""
    proto = load_model(path)
    if not has_qdq(proto):
        return normalize(proto, label=str(path))
    qdq = split_qdq(proto, str(path))
    normalized = normalize(qdq.fp32, label=str(path))
    normalized.trained = check_trained(normalized.model, qdq.specs, str(path))
    return normalized


def _fp32_reference(request: BuildRequest, fp32: onnx.ModelProto,
                    trained: dict[str, QuantSpec]) -> onnx.ModelProto:
    """What verification compares against: the model itself, or ``--fp32-reference`` for a QDQ input."""
    if request.fp32_reference is None:
        return fp32
    if not trained:
        raise RecipeError(f"--fp32-reference {request.fp32_reference}: only for an already-quantized "
                          f"QDQ model; {request.model} is a float model and is its own reference")
    reference = load_and_normalize(request.fp32_reference).model
    for kind, ours, theirs in (("inputs", model_inputs(fp32), model_inputs(reference)),
                               ("outputs", fp32.graph.output, reference.graph.output)):
        mine, other = [t.name for t in ours], [t.name for t in theirs]
        if mine != other:
            raise RecipeError(f"--fp32-reference {request.fp32_reference}: its {kind} {other} differ "
                              f"from {request.model}'s {mine}")
    return reference


def load_and_normalize(path: Path) -> NormalizeResult:
    start = time.perf_counter()
    result = normalize(load_model(path), label=str(path))
    log.info("normalized %s in %.2f s", path, time.perf_counter() - start)
    return result


def build(request: BuildRequest, shared: SharedStages | None = None) -> BuildResult:
    """Compile ``request.model`` for ``request.target``; artifacts appear atomically in out_dir.

    ``shared``: stages already run for another target of the same model and data (multi-target build).
    Every pass the build runs (normalization, boosters, Q/DQ insertion, backend rewrites) runs in one
    pass context: ``--dump-ir``, ``--check-each-pass`` and the ``-v`` timings see them all."""
    with PassContext.for_build(request.dump_ir, request.check_each_pass).active():
        return _build(request, shared or SharedStages())


def _build(request: BuildRequest, shared: SharedStages) -> BuildResult:
    timings: dict[str, float] = {}
    clock = _Clock(timings)
    backend = get_backend(request.target)
    options = backend.parse_options(request.backend_options)  # a key the target does not know: error now
    if request.precision not in PRECISIONS:
        raise RecipeError(f"--precision {request.precision!r}: choose one of {', '.join(PRECISIONS)}")
    check_request(request)
    check_bundle_target(request.out_dir)  # a non-empty folder no build made: refused before any work
    recipe = load_recipe(request.recipe)
    limits = Thresholds.from_table(recipe.verdict, recipe.source)
    if request.method:
        recipe.method = request.method
    with clock("load+normalize"):
        normalized = shared.once("normalize", (), lambda: load_for_build(request.model))
    passes_so_far = _pass_seconds()  # the normalization's, unless another target of the build ran it
    fp32, trained = normalized.model, normalized.trained
    reference = _fp32_reference(request, fp32, trained)
    if trained and request.accuracy_budget:
        raise RecipeError(f"--accuracy-budget: {request.model} is already quantized (its Q/DQ scales "
                          "are kept); build its FP32 model for a mixed-precision search")
    result = BuildResult(out_dir=request.out_dir, target=request.target,
                         precision=request.precision, timings=timings, options=options)
    job = LoweringJob(name=model_name(request.model), fp32=fp32, qdq=None, plan=None,
                      eval_feeds=[], options=options)
    auto: AutoPlan | None = None
    calib = held_out = None
    mode = resolve_mode(request, recipe, backend.profile_for(options))
    if trained and mode != "static":
        raise RecipeError(f"--mode {mode}: {request.model} is already quantized with static Q/DQ scales; "
                          "build its FP32 model for dynamic quantization")
    verification: Verification | None = None
    if mode != "static":  # activations quantized at run time (all, or per node): dynamic_phase.py
        loaded = shared.once("data", (), lambda: load_data(request, fp32, recipe)) if request.calib else None
        if loaded is not None and loaded[0].synthetic:
            result.warnings.append(RANDOM_WARNING)
        verification, lowered = run_dynamic(mode, request, backend, job, recipe, result, clock, loaded)
    elif request.precision != "fp32":
        calib, held_out = shared.once("data", (), lambda: load_data(request, fp32, recipe))
        if calib.synthetic:
            result.warnings.append(RANDOM_WARNING)
        profile = backend.profile_for(options)
        symmetric = profile.symmetric_activations if recipe.symmetric is None else recipe.symmetric
        boosters = BoosterOptions.from_dict(recipe.boosters, recipe.source).resolved(symmetric)
        if trained:  # already quantized (QAT): weights and scales are final, nothing to rewrite or re-round
            boosters = BoosterOptions(bias_correction=False, shift=False)
        result.metrics["boosters"] = dataclasses.asdict(boosters)
        with clock("boosters"):  # CLE / SmoothQuant / shift: the same function, easier to quantize
            source = shared.boosted(fp32, boosters,
                                    lambda: apply_boosters(fp32, calib, boosters, request.calib_batch))
        job.fp32 = source  # the FP32 model the QDQ model (and a trt cache) refers to; same function
        with clock("calibrate+plan"):
            if request.accuracy_budget:  # sensitivity → search → verified plan, written as a recipe
                auto = choose_precisions(source, profile, recipe, calib, held_out, request)
                recipe, quantized = auto.recipe, auto.quantized
            else:
                with shared.calibration(source, recipe) as known:
                    quantized = quantize_model(source, profile, recipe, calib, request.calib_batch,
                                               known={**known, **trained_stats(trained)}, trained=trained)
                    known.update(quantized.stats)
        if profile.latency_guard and request.measure_latency and not request.accuracy_budget and not trained:
            with clock("latency guard"):
                quantized = _guard(source, quantized, profile, recipe, calib, held_out, request, result)
        if boosters.rounding is not None:  # AdaRound / GPTQ: the plan's grid, better integers
            with clock("learned rounding"):
                quantized.model = learn_rounding(source, quantized.model, quantized.plan, calib,
                                                 boosters.rounding, request.calib_batch)
        if boosters.bias_correction:
            with clock("bias correction"):
                quantized.model = correct_biases(source, quantized.model, calib, request.calib_batch)
        result.warnings.extend(f"recipe regex '{r}' matched no node" for r in recipe.unmatched())
        result.plan, job.qdq, job.plan = quantized.plan, quantized.model, quantized.plan
        job.eval_feeds = list(held_out.batches(request.calib_batch))
        job.eval_labels, job.measure_latency = held_out.labels, request.measure_latency
        with clock("lower"):  # once: verification and the written artifacts share it
            lowered = backend.lower(job)
        with clock("verify"):
            verification = verify(reference, backend.verified_model(lowered), job.eval_feeds, held_out.labels,
                                  request.task_metric,
                                  # ORT timing only says something where ORT runs the model as deployed
                                  latency=request.measure_latency and profile.verify_fused,
                                  fused=profile.verify_fused)
        result.metrics["verification"] = verification.to_dict()
        if auto is not None:
            result.metrics["mixed_precision"] = auto.finish(verification, quantized, len(fp32.graph.node))
            result.failed = auto.failure()
        result.metrics["calibration"] = {"source": calib.source, "samples": len(calib),
                                         "eval_source": held_out.source, "eval_samples": len(held_out),
                                         "method": recipe.method, "synthetic": calib.synthetic}
    else:
        with clock("lower"):
            lowered = backend.lower(job)
    with staged_bundle(request.out_dir) as staging:
        with clock("write"):
            output = backend.write(lowered, staging)
        result.artifacts = [*output.artifacts, Path(REPORT_NAME)]
        if auto is not None:
            kept_fp32 = result.metrics.get("latency_guard", {}).get("kept_fp32_ops", [])
            result.artifacts[-1:-1] = auto.write(staging, kept_fp32)
        result.metrics.update(output.metrics)
        result.runtime_outputs = output.runtime_outputs
        result.warnings.extend(output.notes)
        result.metrics["float_nodes"] = float_nodes(result, backend.float_nodes(result))
        result.warnings.extend(speed_warnings(result.metrics) + backend.speed_warnings(result))
        result.verdict = _verdict(result, limits, backend.verdict_outputs(result))
        result.metrics["passes_ms"] = _pass_milliseconds(normalized.pass_seconds, passes_so_far)
        with clock("bundle"):  # activation histograms, agreement vectors
            bundle.record(staging, request, result, fp32, job.fp32, calib, job.eval_feeds)
        result.artifacts += [Path(bundle.HTML_NAME), Path(bundle.MANIFEST_NAME)]
        write_report(staging / REPORT_NAME, result)
        if "verification" in result.metrics and verification is not None:
            check_gates(verification, request.min_sqnr, request.max_drop)
        if request.strict and not result.verdict.ok:
            raise GateError(f"--strict, nothing written: {advice_hint(result.verdict, request)}")
        bundle.seal(staging, request, result, bundle.calibration_provenance(request, result, calib, held_out))
    return result


def _verdict(result: BuildResult, limits: Thresholds, runtime: dict[str, dict[str, Any]]) -> Verdict:
    """Judge what verification measured: ORT's run of the quantized model and, where the target runs
    its own artifact (``runtime``: LiteRT for ``tflite``), that run too."""
    if (result.metrics.get("dynamic") or {}).get("verified") is False:
        return Verdict("unverified", (UNVERIFIED,), limits)
    if result.precision == "fp32" or "verification" not in result.metrics:
        return Verdict("ok", ("--precision fp32: nothing was quantized, as asked",), limits)
    ver = result.metrics["verification"]
    outputs = {**ver["outputs"], **runtime}
    quantized = len(result.plan.tensors) if result.plan is not None else 0
    return judge(outputs, ver.get("task"), quantized, limits)


def advice_hint(verdict: Verdict, request: BuildRequest) -> str:
    return advice(verdict, request.model_label or str(request.model), request.calib, str(request.out_dir))


def _guard(fp32: onnx.ModelProto, quantized: Quantized, profile: TargetProfile, recipe: Recipe,
           calib: SampleSet, held_out: SampleSet, request: BuildRequest, result: BuildResult) -> Quantized:
    """Keep op types whose int8 kernels lose to FP32 here in FP32 (see ``latency_guard``)."""
    def replan(ops: frozenset[str]) -> Quantized:
        narrowed = dataclasses.replace(recipe, fallback_ops=recipe.fallback_ops | ops)
        return quantize_model(fp32, profile, narrowed, calib, request.calib_batch, known=quantized.stats)

    sample = latency_sample(fp32, held_out.feeds)
    guard = guard_latency(fp32, quantized, sample, profile.compute_ops | profile.support_ops, replan)
    note = guard.note()
    if note and guard.kept_fp32_ops:
        result.warnings.append(note)
    result.metrics["latency_guard"] = {"trials": guard.trials, "kept_fp32_ops": guard.kept_fp32_ops}
    return guard.quantized


def load_data(request: BuildRequest, fp32: onnx.ModelProto, recipe: Recipe) -> tuple[SampleSet, SampleSet]:
    """Calibration samples and held-out evaluation samples (``--eval-data`` or a split), in whole
    batches of the model's batch size where the model fixes it (every later run then uses it)."""
    calib, held_out = _load_sets(request, fp32, recipe)
    batch = fixed_batch(model_inputs(fp32))
    if batch is not None and batch != request.calib_batch:
        log.info("the model fixes its batch size to %d: calibration and verification run batches of %d",
                 batch, batch)
    return calib.for_model_batch(batch, "calibration"), held_out.for_model_batch(batch, "evaluation")


def _load_sets(request: BuildRequest, fp32: onnx.ModelProto, recipe: Recipe) -> tuple[SampleSet, SampleSet]:
    if not request.calib:
        raise CalibrationError("int8 needs calibration data: --calib DATA (npz, folder, module:function, "
                               "mnist), or --precision fp32")
    inputs = model_inputs(fp32)
    image = recipe.calibration.get("image")
    preprocess = ImagePreprocess.from_dict(image) if image else None
    if request.eval_data:
        calib = load_samples(request.calib, inputs, request.calib_samples, preprocess)
        held_out = load_samples(request.eval_data, inputs, request.eval_samples, preprocess, purpose="eval")
        return calib, held_out
    if request.calib == "mnist":
        calib = load_samples("mnist", inputs, request.calib_samples)
        return calib, load_samples("mnist", inputs, request.eval_samples, purpose="eval")
    samples = load_samples(request.calib, inputs, None, preprocess)
    n_eval = min(request.eval_samples, len(samples) // 5)
    if n_eval < 1:
        raise CalibrationError(f"{request.calib}: {len(samples)} samples are too few to calibrate and "
                               "verify; give at least 5 or pass --eval-data")
    calib, held_out = samples.split(n_eval)
    return calib.take(request.calib_samples), held_out


RANDOM_WARNING = ("CALIBRATED ON RANDOM DATA (--calib random): scales and the accuracy numbers in this "
                  "report say nothing about real inputs")


PRECISIONS = ("int8", "fp32")
REPORT_NAME = "report.json"


class _Clock:
    """``with clock("phase"):`` adds the phase's wall time to ``timings``."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, phase: str) -> _Clock:
        self._phase = phase
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self._phase] = time.perf_counter() - self._start
        log.info("phase %-16s %.2f s", self._phase, self.timings[self._phase])


def _pass_seconds() -> dict[str, float]:
    timing = current_context().timing
    return dict(timing.seconds) if timing is not None else {}


def _pass_milliseconds(normalization: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Wall time per pass: the normalization (shared between the targets of a multi-target build)
    plus every pass this build ran after it (``before``: the totals when normalization was done)."""
    seconds = dict(normalization)
    for name, total in _pass_seconds().items():
        if name not in before or total > before[name]:
            seconds[name] = seconds.get(name, 0.0) + total - before.get(name, 0.0)
    return {k: round(v * 1e3, 3) for k, v in seconds.items()}


def model_name(path: Path) -> str:
    """Artifact stem: the model file's stem without any ``.fp32``/``.int8`` suffix."""
    stem = path.name
    for suffix in (".onnx", ".fp32", ".int8"):
        stem = stem.removesuffix(suffix)
    return stem or "model"
