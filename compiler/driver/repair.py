"""Repair: a static int8 build whose own verdict is not ``ok`` gets a mixed-precision plan.

dsqc judges every build on its held-out data (``verdict``). Where plain int8 comes out ``degraded`` or
``collapsed``, the build runs the search of ``--accuracy-budget`` with the limit the verdict missed
(its ``degraded_*`` line: ``sqnr:15`` by default) on the same held-out data, and keeps the mixed plan
unless ``refuse_reason`` finds it no better, no longer int8, or slower than FP32. A kept plan that still
misses the line is judged as usual (no exit 2: nobody asked for a budget). ``--no-repair`` keeps plain
int8.

Measured (tools/bench/REAL.md, REAL_NOTES.md): the torchvision MobileNetV2 graph (random init) builds
degraded in plain int8 (12.8 dB on its verification samples); repaired, 6 of 64 nodes leave int8 and 512
unseen photo crops measure 15.9 dB where ORT's best ``quantize_static`` gives 13.6, at 0.67× FP32's
latency on the VNNI host (plain int8 0.53×).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from typing import Any

from dsqc.autoprec.mixed_precision import achieved_on, parse_accuracy_budget
from dsqc.autoprec.precision_search import Budget
from dsqc.backends.registry import Lowered
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.stages import BuildRun
from dsqc.driver.verdict import Thresholds, judge
from dsqc.verify import Verification, compare_latency, latency_sample

log = logging.getLogger(__name__)
Start = Callable[[BuildRequest], BuildRun]
NOISE = 1.05  # two builds' latency ratios within 5 % are the same speed


def repair_budget(verification: Verification, quantized_tensors: int, limits: Thresholds,
                  runtime: dict[str, dict[str, Any]] | None = None) -> str | None:
    """The ``--accuracy-budget`` that would lift a degraded or collapsed build to ``ok``, or ``None``.

    The first limit missed, in the order SQNR, cosine, task drop; the search holds each output and each
    scale group of an output's channels to it, as the verdict does. ``runtime``: the target runtime's own
    output metrics (``Backend.verdict_outputs``), judged beside ORT's as the verdict judges them."""
    outputs = {**verification.outputs, **(runtime or {})}
    verdict = judge(outputs, verification.task, quantized_tensors, limits)
    return verdict.budget() if verdict.level in ("degraded", "collapsed") else None


def wants_repair(run: BuildRun) -> bool:
    """A static int8 build, no budget of its own, not already quantized, on a target with float nodes."""
    request = run.request
    return (request.repair and run.mode == "static" and request.precision == "int8"
            and request.accuracy_budget is None and not run.trained
            and not run.backend.profile_for(run.job.options).integer_only)


def repaired(run: BuildRun, lowered: Lowered, start: Start) -> tuple[BuildRun, Lowered]:
    """``run`` unchanged when its verdict is ok; else the better of it and its mixed-precision rebuild
    (``start`` begins that build), with the ``repair`` report section on the one kept."""
    assert run.verification is not None and run.result.plan is not None
    budget_text = repair_budget(run.verification, len(run.result.plan.tensors), run.limits,
                                run.backend.verdict_outputs(lowered.metrics))
    if budget_text is None:
        return run, lowered
    budget = parse_accuracy_budget(budget_text)
    log.info("the int8 build misses the verdict's ok line: searching a mixed-precision plan for %s",
             budget_text)
    second = start(dataclasses.replace(run.request, accuracy_budget=budget_text))
    second_lowered = second.quantize_static()
    assert second.verification is not None
    before = achieved_on(budget, run.verification)
    if (plain_in_runtime := run.achieved_in_runtime(budget)) is not None:  # tflite: LiteRT's run too
        before = budget.worse(before, plain_in_runtime)
    assert second.auto is not None
    after = second.auto.achieved  # the worse of ORT's and the target runtime's, as finish judged it
    tensors = len(second.result.plan.tensors) if second.result.plan is not None else 0
    int8_ratio, mixed_ratio = _latency_ratios((run, lowered), (second, second_lowered))
    refusal = refuse_reason(budget, before, after, tensors, mixed_ratio, int8_ratio)
    kept, kept_lowered = (run, lowered) if refusal else (second, second_lowered)
    kept.result.failed = None  # a missed repair is judged by the verdict, not an error: no budget was asked
    kept.result.metrics["repair"] = _section(budget, (before, after), refusal is None, (run, int8_ratio),
                                             (second, mixed_ratio))
    if refusal:
        kept.result.warnings.append(f"repair: the mixed-precision plan for {budget} measured "
                                    f"{_value(budget, after)} {refusal}: plain int8 kept")
    return kept, kept_lowered


def refuse_reason(budget: Budget, before: float, after: float, tensors: int,
                  latency_ratio: float | None, int8_ratio: float | None = None) -> str | None:
    """Why the mixed-precision plan is not kept, or ``None`` to keep it: it must still quantize, improve
    on plain int8 and, where the build timed it (ORT for ``onnx``, LiteRT against the float32 ``.tflite``
    for ``tflite``; ``trt`` builds no engine to time), not run slower than FP32 (what int8 is for) unless
    plain int8 does too, within ``NOISE`` of it. On the random-init EfficientNet-B0 graph the ok line took
    43 of 158 nodes off int8 and 1.40× FP32's time on the VNNI host (plain int8 0.99×): a model slower
    than FP32 is no int8 build. Where plain int8 itself runs at FP32's speed (EfficientNet-B0 on a 2-core
    AVX2 Xeon: 1.10×), a mixed plan as fast as it (1.09×) is no slower a build."""
    if tensors == 0:
        return "with no tensor left in int8 (an FP32 model)"
    if not budget.met(after) and budget.gap(after) >= budget.gap(before):
        return f"no better than plain int8's {_value(budget, before)}"
    limit = max(1.0, (int8_ratio or 0.0) * NOISE)
    if latency_ratio is not None and latency_ratio > limit:
        than = f" and than plain int8's {int8_ratio:.2f}×" if int8_ratio is not None else ""
        return (f"at {latency_ratio:.2f}× FP32's latency, slower than FP32{than} (--accuracy-budget "
                f"{budget} builds it anyway)")
    return None


def _value(budget: Budget, value: float) -> str:
    return f"{value:.4g} dB" if budget.kind == "sqnr" else f"{value:.4g}"


def _latency_ratios(int8: tuple[BuildRun, Lowered],
                    mixed: tuple[BuildRun, Lowered]) -> tuple[float | None, float | None]:
    """Plain int8's and the mixed plan's time over FP32's, the three timed again side by side (interleaved
    rounds, CPU time), as builds timed apart moved by ±10 % on a busy 2-core CPU (EfficientNet-B0 student:
    the mixed plan read 1.01× FP32 against plain int8's 0.89× and was refused by that noise): in ORT where
    verification timed both there (``onnx``), else in the target's runtime (``tflite``: LiteRT, both int8
    files against the float32 ``.tflite``); each build's own ratio where neither timed them."""
    (run, lowered), (second, second_lowered) = int8, mixed
    assert run.verification is not None and second.verification is not None
    timed = run.verification.latency_ms is not None and second.verification.latency_ms is not None
    if not timed or not run.job.eval_feeds:
        paired = run.backend.latency_ratios_side_by_side([lowered, second_lowered])
        if paired is not None:
            return paired[0], paired[1]
        return _latency_ratio(run, lowered), _latency_ratio(second, second_lowered)
    sample = latency_sample(run.reference, run.job.eval_feeds[0])
    models = [run.reference, run.backend.verified_model(lowered),
              second.backend.verified_model(second_lowered)]
    base, plain, mixed_ms = (t.cpu_ms for t in compare_latency(models, sample))
    return plain / max(base, 1e-9), mixed_ms / max(base, 1e-9)


def _latency_ratio(run: BuildRun, lowered: Lowered) -> float | None:
    """The build's int8/FP32 time: ORT's where verification timed it, else the target runtime's."""
    assert run.verification is not None
    ratio = (run.verification.latency_ms or {}).get("ratio")
    return float(ratio) if ratio is not None else run.backend.latency_ratio(lowered)


def _section(budget: Budget, measured: tuple[float, float], kept: bool, int8: tuple[BuildRun, float | None],
             mixed: tuple[BuildRun, float | None]) -> dict[str, Any]:
    """Both builds side by side: the budget metric, size and latency ratio (the one the decision read)."""
    def side(built: tuple[BuildRun, float | None], value: float) -> dict[str, Any]:
        run, ratio = built
        assert run.verification is not None
        return {"achieved": value, "met": budget.met(value),
                "quantized_bytes": (run.verification.size_bytes or {}).get("quantized"),
                "latency_ratio": ratio}

    above = (mixed[0].result.metrics.get("mixed_precision") or {}).get("above_int8")
    return {"budget": str(budget), "kept": "mixed" if kept else "int8", "nodes_above_int8": above,
            "int8": side(int8, measured[0]), "mixed": side(mixed, measured[1])}
