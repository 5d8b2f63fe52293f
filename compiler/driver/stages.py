"""The stages of one build after normalization, as ``pipeline.build`` runs them:

quantize (static: data → boosters → calibrate+plan → latency guard → learned rounding → bias
correction; or dynamic, ``dynamic_phase``) ─► lower ─► verify ─► write the bundle (artifacts, report,
verdict, gates, manifest).
"""

from __future__ import annotations

import dataclasses
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dsqc.autoprec.mixed_precision import AutoPlan, achieved_in_runtime, choose_precisions
from dsqc.autoprec.precision_search import Budget
from dsqc.backends.registry import Backend, Lowered, LoweringJob, get_backend
from dsqc.calibration.coverage import coverage_warning, range_coverage
from dsqc.calibration.data import SampleSet
from dsqc.driver import bundle
from dsqc.driver.build_data import RANDOM_WARNING, load_data
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.bundle_output import staged_bundle
from dsqc.driver.dynamic_phase import UNVERIFIED, run_dynamic
from dsqc.driver.report import float_nodes, speed_warnings, write_report
from dsqc.driver.shared_stages import SharedStages
from dsqc.driver.verdict import Thresholds, Verdict, advice, judge
from dsqc.errors import DsqcError, GateError
from dsqc.pass_infra import current_context
from dsqc.quant.boosters import BiasCorrector, BoosterOptions, apply_boosters
from dsqc.quant.from_qdq import trained_stats
from dsqc.quant.latency_guard import guard_latency
from dsqc.quant.profile import TargetProfile
from dsqc.quant.quantize import Quantized, quantize_model
from dsqc.quant.range_select import SELECT, select_method
from dsqc.quant.recipe import Recipe
from dsqc.quant.rounding import learn_rounding
from dsqc.quant.spec import QuantSpec
from dsqc.verify import Feeds, Verification, check_gates, latency_sample, verify

log = logging.getLogger(__name__)
PRECISIONS = ("int8", "fp32")
REPORT_NAME = "report.json"


@dataclass
class BuildRun:
    """One target's build in progress: what ``pipeline.build`` set up, and what the stages fill in."""

    request: BuildRequest
    shared: SharedStages
    backend: Backend
    recipe: Recipe
    limits: Thresholds
    mode: str  # static | dynamic | auto
    fp32: onnx.ModelProto  # the normalized model
    reference: onnx.ModelProto  # what verification compares against (fp32, or --fp32-reference)
    trained: dict[str, QuantSpec]  # Q/DQ specs of an already-quantized input (kept)
    pass_seconds: dict[str, float]  # the normalization's pass timings
    passes_before: dict[str, float]  # pass-context totals when normalization was done
    result: BuildResult
    job: LoweringJob
    clock: Clock
    calib: SampleSet | None = None
    held_out: SampleSet | None = None
    auto: AutoPlan | None = None
    verification: Verification | None = field(default=None)
    correctors: dict[tuple[int, str, int], BiasCorrector] = field(default_factory=dict)

    def quantize_dynamic(self) -> Lowered:
        """Activations quantized at run time, all or per node (``dynamic_phase``); lowered once."""
        request, fp32 = self.request, self.fp32
        loaded = (self.shared.once("data", (), lambda: load_data(request, fp32, self.recipe))
                  if request.calib else None)
        if loaded is not None:  # the bundle's provenance names the samples (boosters, held-out split)
            self.calib, self.held_out = loaded
            if loaded[0].synthetic:
                self.result.warnings.append(RANDOM_WARNING)
        self.verification, lowered = run_dynamic(self.mode, request, self.backend, self.job, self.recipe,
                                                 self.result, self.clock, loaded)
        return lowered

    def quantize_static(self) -> Lowered:
        """Calibrated activations: boosters, plan, learned rounding, bias correction; lower; verify."""
        request, shared, clock, result, job = self.request, self.shared, self.clock, self.result, self.job
        fp32, recipe = self.fp32, self.recipe
        calib, held_out = self.calib, self.held_out = shared.once(
            "data", (), lambda: load_data(request, fp32, recipe))
        if calib.synthetic:
            result.warnings.append(RANDOM_WARNING)
        profile = self.backend.profile_for(job.options)
        boosters = self._boosters(profile)
        with clock("boosters"):  # CLE / SmoothQuant / shift: the same function, easier to quantize
            source = shared.boosted(fp32, boosters,
                                    lambda: apply_boosters(fp32, calib, boosters, request.calib_batch))
        job.fp32 = source  # the FP32 model the QDQ model (and a trt cache) refers to; same function
        with clock("calibrate+plan"):
            quantized = self._plan(source, profile, boosters, calib, held_out)
        if profile.latency_guard and request.measure_latency and not request.accuracy_budget \
                and not self.trained:
            with clock("latency guard"):
                quantized = _guard(source, quantized, profile, self.recipe, calib, held_out, request, result)
        if boosters.rounding is not None:  # AdaRound / GPTQ: the plan's grid, better integers
            with clock("learned rounding"):
                quantized.model = learn_rounding(source, quantized.model, quantized.plan, calib,
                                                 boosters.rounding, request.calib_batch)
        if (correct := self._corrector(source, boosters, calib)) is not None:
            with clock("bias correction"):
                quantized.model = correct(quantized.model)
        result.warnings.extend(f"recipe regex '{r}' matched no node" for r in self.recipe.unmatched())
        result.plan, job.qdq, job.plan = quantized.plan, quantized.model, quantized.plan
        job.eval_feeds = list(held_out.batches(request.calib_batch))
        job.eval_labels, job.measure_latency = held_out.labels, request.measure_latency
        job.mask_padding = self.recipe.mask_padding
        lowered = self.lower()
        with clock("verify"):
            self.verification = verify(self.reference, self.backend.verified_model(lowered), job.eval_feeds,
                                       held_out.labels, request.task_metric,
                                       # ORT timing only says something where ORT runs it as deployed
                                       latency=request.measure_latency and profile.verify_fused,
                                       fused=profile.verify_fused, mask_padding=self.recipe.mask_padding)
        result.metrics["verification"] = self.verification.to_dict()
        with clock("range coverage"):
            coverage = range_coverage(source, quantized.plan, held_out, request.calib_batch, quantized.stats)
        result.metrics["range_coverage"] = coverage
        if (line := coverage_warning(coverage)) is not None:
            result.warnings.append(line)
        if self.auto is not None:
            with clock("verify in runtime"):  # the budget in the target's own runtime (tflite: LiteRT)
                in_runtime = self.achieved_in_runtime(self.auto.budget)
            result.metrics["mixed_precision"] = self.auto.finish(self.verification, quantized,
                                                                 len(fp32.graph.node), in_runtime)
            result.failed = self.auto.failure()
        result.metrics["calibration"] = {"source": calib.source, "samples": len(calib),
                                         "eval_source": held_out.source, "eval_samples": len(held_out),
                                         "method": self.recipe.method, "synthetic": calib.synthetic}
        return lowered

    def _boosters(self, profile: TargetProfile) -> BoosterOptions:
        symmetric = profile.symmetric_activations if self.recipe.symmetric is None else self.recipe.symmetric
        boosters = BoosterOptions.from_dict(self.recipe.boosters, self.recipe.source).resolved(symmetric)
        if self.trained:  # already quantized (QAT): weights and scales are final, nothing to rewrite
            boosters = BoosterOptions(bias_correction=False, shift=False)
        self.result.metrics["boosters"] = dataclasses.asdict(boosters)
        return boosters

    def _plan(self, source: onnx.ModelProto, profile: TargetProfile, boosters: BoosterOptions,
              calib: SampleSet, held_out: SampleSet) -> Quantized:
        """The plan and its QDQ model: searched under ``--accuracy-budget``, else the recipe's, with
        calibration statistics shared with the other targets of the build."""
        request = self.request
        if self.recipe.method == SELECT:  # min/max or percentile, whichever moves the output less
            if self.trained:  # QAT specs are kept: no range is calibrated
                self.recipe = dataclasses.replace(self.recipe, method="minmax")
            else:
                def candidate(recipe: Recipe, samples: SampleSet) -> onnx.ModelProto:
                    """One range method's model as the build makes it: planned, then bias-corrected."""
                    model = self._quantize(source, profile, recipe, samples, subset=samples.source).model
                    correct = self._corrector(source, boosters, samples)
                    return correct(model) if correct else model

                with current_context().trial().active():  # candidates stay out of --dump-ir
                    self.recipe, selection = select_method(source, self.recipe, calib, request.calib_batch,
                                                           candidate, fused=profile.verify_fused)
                self.result.metrics["range_method"] = selection.to_dict()
        if request.accuracy_budget:  # sensitivity → search → verified plan, written as a recipe
            self.auto = choose_precisions(source, profile, self.recipe, calib, held_out, request,
                                          self._corrector(source, boosters, calib), self._runtime_run)
            self.recipe = self.auto.recipe
            return self.auto.quantized
        return self._quantize(source, profile, self.recipe, calib)

    def _runtime_run(self, model: onnx.ModelProto, feeds: list[Feeds]) -> dict[str, np.ndarray] | None:
        """``model`` run by the target's own runtime, where that is not ORT (``Backend.runtime_outputs``)."""
        return self.backend.runtime_outputs(model, self.job.options, feeds)

    def achieved_in_runtime(self, budget: Budget) -> float | None:
        """What the built QDQ model achieves in ``budget``'s unit in the target's own runtime, on the
        held-out samples verification used (``None``: the target's runtime is ORT's reference)."""
        assert self.held_out is not None and self.job.qdq is not None
        return achieved_in_runtime(self._runtime_run, budget, self.reference, self.job.qdq,
                                   self.job.eval_feeds, self.held_out.labels, self.request.task_metric,
                                   self.recipe.mask_padding)

    def _corrector(self, source: onnx.ModelProto, boosters: BoosterOptions,
                   samples: SampleSet) -> BiasCorrector | None:
        """The build's bias correction on ``samples`` (None: off), one per sample set, so that its FP32
        input means are streamed once for range select's candidates, the search's rounds and the build.
        Learned rounding is not applied to the plans these decisions measure (minutes per plan): it comes
        after them, on the chosen plan only."""
        if not boosters.bias_correction:
            return None
        key = (id(source), samples.source, len(samples))
        if key not in self.correctors:
            self.correctors[key] = BiasCorrector(source, samples, self.request.calib_batch)
        return self.correctors[key]

    def _quantize(self, source: onnx.ModelProto, profile: TargetProfile, recipe: Recipe,
                  samples: SampleSet, subset: str = "") -> Quantized:
        """The plan of ``recipe`` on ``samples`` (``subset`` names a part of the calibration set, as
        ``range_select``'s candidates use), statistics shared with the build's other targets."""
        with self.shared.calibration(source, recipe, subset) as known:
            quantized = quantize_model(source, profile, recipe, samples, self.request.calib_batch,
                                       known={**known, **trained_stats(self.trained)}, trained=self.trained)
            known.update(quantized.stats)
        return quantized

    def lower(self) -> Lowered:
        """The target's lowering, once: verification and the written artifacts share it."""
        with self.clock("lower"):
            return self.backend.lower(self.job)

    def write(self, lowered: Lowered) -> None:
        """Artifacts, report, verdict and manifest into a staging folder that replaces the output folder
        whole; gates and ``--strict`` decide before anything is moved into place."""
        request, result, backend = self.request, self.result, self.backend
        with staged_bundle(request.out_dir) as staging:
            with self.clock("write"):
                output = backend.write(lowered, staging)
            result.artifacts = [*output.artifacts, Path(REPORT_NAME)]
            if self.auto is not None:
                kept_fp32 = result.metrics.get("latency_guard", {}).get("kept_fp32_ops", [])
                result.artifacts[-1:-1] = self.auto.write(staging, kept_fp32)
            result.metrics.update(output.metrics)
            result.runtime_outputs = output.runtime_outputs
            result.warnings.extend(output.notes)
            result.metrics["float_nodes"] = float_nodes(result, backend.float_nodes(result),
                                                        backend.integer_nodes(result))
            result.warnings.extend(speed_warnings(result.metrics) + backend.speed_warnings(result))
            result.verdict = _verdict(result, self.limits, backend.verdict_outputs(result.metrics))
            result.metrics["passes_ms"] = _pass_milliseconds(self.pass_seconds, self.passes_before)
            with self.clock("bundle"):  # activation histograms, agreement vectors
                ranged = self.calib if self.mode == "static" else None  # calibrated ranges to histogram
                bundle.record(staging, request, result, self.fp32, self.job.fp32, ranged, self.job.eval_feeds)
            result.artifacts += [Path(bundle.HTML_NAME), Path(bundle.MANIFEST_NAME)]
            write_report(staging / REPORT_NAME, result)
            if "verification" in result.metrics and self.verification is not None:
                check_gates(self.verification, request.min_sqnr, request.max_drop)
            if request.strict and not result.verdict.ok:
                raise GateError(f"--strict, nothing written: {advice_hint(result.verdict, request)}")
            bundle.seal(staging, request, result,
                        bundle.calibration_provenance(request, result, self.calib, self.held_out))


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
    return advice(verdict, request.model_label or str(request.model), request.calib, str(request.out_dir),
                  _integer_only_advice(request, verdict))


def _integer_only_advice(request: BuildRequest, verdict: Verdict) -> str | None:
    """What to try where the target has no float layers: int16 activations where they matter (the
    search), everywhere (``Backend.wider``), or another target."""
    backend = get_backend(request.target)
    try:
        options = backend.parse_options(request.backend_options)
    except DsqcError:  # checked before the build ran; a hint must not fail the build now
        return None
    profile = backend.profile_for(options)
    if not profile.integer_only:
        return None
    wider = backend.wider(options)
    budget = verdict.suggested_budget()
    tries = []
    if profile.int16_activations:
        tries.append(f"--accuracy-budget {budget} (int16 activations on the nodes that need them; the "
                     "default repair does this unless --no-repair)")
    if wider is not None:
        tries.append(f"{wider.flag} ({wider.what})")
    tries.append("a target whose plans can keep nodes in float (--target onnx, tflite or trt); `dsqc debug` "
                 "names the tensors that lose most")
    return "; or ".join(tries)


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


class Clock:
    """``with clock("phase"):`` adds the phase's wall time to ``timings``."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, phase: str) -> Clock:
        self._phase = phase
        return self

    def __enter__(self) -> None:
        self._start = time.perf_counter()

    def __exit__(self, *exc: object) -> None:
        self.timings[self._phase] = time.perf_counter() - self._start
        log.info("phase %-16s %.2f s", self._phase, self.timings[self._phase])


def pass_seconds() -> dict[str, float]:
    timing = current_context().timing
    return dict(timing.seconds) if timing is not None else {}


def _pass_milliseconds(normalization: dict[str, float], before: dict[str, float]) -> dict[str, float]:
    """Wall time per pass: the normalization (shared between the targets of a multi-target build)
    plus every pass this build ran after it (``before``: the totals when normalization was done)."""
    seconds = dict(normalization)
    for name, total in pass_seconds().items():
        if name not in before or total > before[name]:
            seconds[name] = seconds.get(name, 0.0) + total - before.get(name, 0.0)
    return {k: round(v * 1e3, 3) for k, v in seconds.items()}
