"""Repair: a static int8 build whose own verdict is not ``ok`` gets a dynamic build or a mixed-precision plan.

dsqc judges every build on its held-out data (``verdict``). Where plain int8 comes out ``degraded`` or
``collapsed``, a transformer or MLP is first built with activations quantized at run time (``--mode
dynamic``, ``dynamic_fits``); unless that build meets the ok line at plain int8's speed, the build runs
the search of ``--accuracy-budget`` with the limit the verdict missed (its ``degraded_*`` line:
``sqnr:15`` by default) on the same held-out data; on an integer-only target (``hls``) that search lifts
nodes to int16 activations, not to float. Each alternative must pass ``refuse_reason`` (still quantized,
better than plain int8, not slower than FP32); of those, the fastest that meets the line is kept, else the
most accurate. A kept build that still misses the line is judged as usual (no exit 2: nobody asked for a
budget). ``--no-repair`` keeps plain int8.

Measured (tools/bench/REAL.md, REAL_NOTES.md): the torchvision MobileNetV2 graph (random init) builds
degraded in plain int8 (12.8 dB on its verification samples); repaired, 6 of 64 nodes leave int8 and 512
unseen photo crops measure 15.9 dB where ORT's best ``quantize_static`` gives 13.6, at 0.67× FP32's
latency on the VNNI host (plain int8 0.53×).
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from dsqc.autoprec.mixed_precision import achieved_on, parse_accuracy_budget
from dsqc.autoprec.precision_search import Budget
from dsqc.backends.registry import Lowered
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.stages import BuildRun
from dsqc.driver.verdict import Thresholds, judge
from dsqc.quant.boosters import BoosterOptions
from dsqc.quant.dynamic import candidates
from dsqc.quant.spec import Precision
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
    """A static int8 build, no budget of its own, not already quantized, on a target where nodes can go
    above int8: float nodes, or int16 activations (``profile.int16_activations``) not already everywhere."""
    request = run.request
    profile = run.backend.profile_for(run.job.options)
    wider = profile.int16_activations and profile.activation_dtype != "int16"
    return (request.repair and run.mode == "static" and request.precision == "int8"
            and request.accuracy_budget is None and not run.trained
            and (not profile.integer_only or wider))


def dynamic_fits(run: BuildRun) -> bool:
    """Whether repair also builds the model with activations quantized at run time (``--mode dynamic``):
    the target runs dynamic kernels, every weighted layer is a MatMul/Gemm (a transformer or an MLP; a
    dynamic Conv has no fused kernel in ORT), neither ``--mode`` nor the recipe named the mode, and the
    recipe asks nothing dynamic mode would drop (int4 weights, fp16 or int4 nodes, learned rounding)."""
    if run.backend.profile_for(run.job.options).dynamic_refusal or run.trained:
        return False
    if run.request.mode is not None or run.recipe.mode_asked:  # `--mode static` means static
        return False
    boosters = BoosterOptions.from_dict(run.recipe.boosters, run.recipe.source)
    if boosters.rounding is not None or run.recipe.weight_dtype != "int8":
        return False
    if any(n.op_type in ("Conv", "ConvTranspose") for n in run.fp32.graph.node):  # 1-D ones too
        return False
    found = candidates(run.fp32)
    asked = {run.recipe.options_for(c.node, c.op).precision for c in found}
    return bool(found) and asked <= {None, Precision.INT8, Precision.FP32}


def repaired(run: BuildRun, lowered: Lowered, start: Start) -> tuple[BuildRun, Lowered]:
    """``run`` unchanged when its verdict is ok; else the best of it, its dynamic build (``dynamic_fits``)
    and its mixed-precision rebuild (``start`` begins each), with the ``repair`` report section on the
    one kept.

    A dynamic build that meets the ok line and runs as fast as plain int8 (within ``NOISE``) is kept
    without a search: a mixed plan is plain int8 with layers moved above int8, so it can be more accurate
    but not faster. MiniLM on ``tflite`` (tools/bench/TFLITE_REAL.md): plain static int8 9.1 dB; the
    mixed plan 15.9 dB (7 MatMuls fp32), 0.52× FP32's LiteRT time; dynamic 26.0 dB in ORT's reference
    and 25.8 dB in LiteRT, 0.35×. Otherwise the search runs, and of the builds ``refuse_reason`` lets
    through, the fastest that meets the line is kept, else the most accurate."""
    assert run.verification is not None and run.result.plan is not None
    budget_text = repair_budget(run.verification, len(run.result.plan.tensors), run.limits,
                                run.backend.verdict_outputs(lowered.metrics))
    if budget_text is None:
        return run, lowered
    budget = parse_accuracy_budget(budget_text)
    builds = [Candidate("int8", run, lowered, _achieved(budget, run), _tensors(run))]
    if dynamic_fits(run):
        log.info("the int8 build misses the verdict's ok line %s: trying activations quantized at run "
                 "time", budget_text)
        dynamic = start(dataclasses.replace(run.request, mode="dynamic"))
        dynamic_lowered = dynamic.quantize_dynamic()
        builds.append(Candidate("dynamic", dynamic, dynamic_lowered,
                                _achieved(budget, dynamic), _tensors(dynamic)))
        _time(builds)
        plain, dyn = builds
        fast = plain.ratio is None or dyn.ratio is None or dyn.ratio <= plain.ratio * NOISE
        if budget.met(dyn.achieved) and fast and _refusal(budget, plain, dyn) is None:
            return _keep(budget, builds, dyn)
    log.info("the int8 build misses the verdict's ok line: searching a mixed-precision plan for %s",
             budget_text)
    second = start(dataclasses.replace(run.request, accuracy_budget=budget_text))
    second_lowered = second.quantize_static()
    assert second.auto is not None
    # the worse of ORT's and the target runtime's, as finish judged it
    builds.append(Candidate("mixed", second, second_lowered, second.auto.achieved, _tensors(second)))
    _time(builds)
    kept, refusals = pick(budget, builds)
    outcome = "plain int8 kept" if kept is builds[0] else f"the {_NAMES[kept.kind]} kept"
    for b in builds[1:]:
        if (why := refusals[b.kind]) is not None:
            kept.run.result.warnings.append(f"repair: the {_NAMES[b.kind]} for {budget} measured "
                                            f"{_value(budget, b.achieved)} {why}: {outcome}")
    return _keep(budget, builds, kept)


def pick(budget: Budget, builds: list[Candidate]) -> tuple[Candidate, dict[str, str | None]]:
    """The build to keep of plain int8 (first) and its alternatives, and why each alternative was
    refused (``None``: not refused): of those ``refuse_reason`` lets through, the fastest that meets the
    line (time unmeasured counts as fast), else the most accurate; plain int8 when none is left."""
    plain = builds[0]
    refusals = {b.kind: _refusal(budget, plain, b) for b in builds[1:]}

    def rank(b: Candidate) -> tuple[int, float, float]:
        met = budget.met(b.achieved)
        return (0 if met else 1, (b.ratio or 0.0) if met else 0.0, budget.gap(b.achieved))

    kept = min((b for b in builds[1:] if refusals[b.kind] is None), key=rank, default=plain)
    return kept, refusals


@dataclass
class Candidate:
    """One build repair compares: plain int8, dynamic or mixed; ``achieved`` in the budget's unit (the
    worse of ORT's reference and the target runtime's), ``ratio`` its time over FP32's."""

    kind: str
    run: BuildRun
    lowered: Lowered
    achieved: float
    tensors: int  # tensors its plan quantizes
    ratio: float | None = None


_NAMES = {"int8": "plain int8 build", "dynamic": "dynamic build (activations quantized at run time)",
          "mixed": "mixed-precision plan"}


def _tensors(run: BuildRun) -> int:
    return len(run.result.plan.tensors) if run.result.plan is not None else 0


def _achieved(budget: Budget, run: BuildRun) -> float:
    """What a build measured in the budget's unit: the worse of ORT's verification and the target
    runtime's own run (``tflite``: LiteRT), as the mixed plan's search judged its own."""
    assert run.verification is not None
    achieved = achieved_on(budget, run.verification)
    in_runtime = run.achieved_in_runtime(budget)
    return achieved if in_runtime is None else budget.worse(achieved, in_runtime)


def _refusal(budget: Budget, plain: Candidate, other: Candidate) -> str | None:
    anyway = "--mode dynamic" if other.kind == "dynamic" else ""
    return refuse_reason(budget, plain.achieved, other.achieved, other.tensors, other.ratio, plain.ratio,
                         anyway)


def _keep(budget: Budget, builds: list[Candidate], kept: Candidate) -> tuple[BuildRun, Lowered]:
    """``kept``'s run with the report's ``repair`` section; a missed repair is judged by the verdict, not
    an error (no budget was asked)."""
    kept.run.result.failed = None
    kept.run.result.metrics["repair"] = _section(budget, builds, kept)
    return kept.run, kept.lowered


def refuse_reason(budget: Budget, before: float, after: float, tensors: int, latency_ratio: float | None,
                  int8_ratio: float | None = None, anyway: str = "") -> str | None:
    """Why an alternative to plain int8 (the mixed-precision plan, the dynamic build) is not kept, or
    ``None`` to keep it; ``anyway``: the flag that builds it all the same (default: the budget's search).
    It must still quantize, improve
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
        return (f"at {latency_ratio:.2f}× FP32's latency, slower than FP32{than} "
                f"({anyway or f'--accuracy-budget {budget}'} builds it anyway)")
    return None


def _value(budget: Budget, value: float) -> str:
    return f"{value:.4g} dB" if budget.kind == "sqnr" else f"{value:.4g}"


def _time(builds: list[Candidate]) -> None:
    """Each build's time over FP32's, all timed again side by side (interleaved rounds, CPU time), as
    builds timed apart moved by ±10 % on a busy 2-core CPU (EfficientNet-B0 student: the mixed plan read
    1.01× FP32 against plain int8's 0.89× and was refused by that noise): in ORT where verification timed
    them there (``onnx``), else in the target's runtime (``tflite``: LiteRT, the int8 files against the
    float32 ``.tflite``); each build's own ratio where neither timed them."""
    first = builds[0].run
    timed = all(b.run.verification is not None and b.run.verification.latency_ms is not None for b in builds)
    if not timed or not first.job.eval_feeds:
        paired = first.backend.latency_ratios_side_by_side([b.lowered for b in builds])
        ratios = paired if paired is not None else [_latency_ratio(b.run, b.lowered) for b in builds]
    else:
        sample = latency_sample(first.reference, first.job.eval_feeds[0])
        models = [first.reference, *(b.run.backend.verified_model(b.lowered) for b in builds)]
        base, *ms = (t.cpu_ms for t in compare_latency(models, sample))
        ratios = [m / max(base, 1e-9) for m in ms]
    for b, ratio in zip(builds, ratios, strict=True):
        b.ratio = ratio


def _latency_ratio(run: BuildRun, lowered: Lowered) -> float | None:
    """The build's int8/FP32 time: ORT's where verification timed it, else the target runtime's."""
    assert run.verification is not None
    ratio = (run.verification.latency_ms or {}).get("ratio")
    return float(ratio) if ratio is not None else run.backend.latency_ratio(lowered)


def _section(budget: Budget, builds: list[Candidate], kept: Candidate) -> dict[str, Any]:
    """The builds side by side: the budget metric, size and latency ratio (the one the decision read)."""
    def side(b: Candidate) -> dict[str, Any]:
        assert b.run.verification is not None
        return {"achieved": b.achieved, "met": budget.met(b.achieved),
                "quantized_bytes": (b.run.verification.size_bytes or {}).get("quantized"),
                "latency_ratio": b.ratio}

    mixed = next((b for b in builds if b.kind == "mixed"), None)
    above = (mixed.run.result.metrics.get("mixed_precision") or {}).get("above_int8") if mixed else None
    return {"budget": str(budget), "kept": kept.kind, "nodes_above_int8": above,
            **{b.kind: side(b) for b in builds}}
