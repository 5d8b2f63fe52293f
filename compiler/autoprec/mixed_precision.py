"""Automatic mixed precision for ``dsqc build --accuracy-budget [--size-budget]``.

One calibration (``PlanSpace``), per-node sensitivity on a few held-out samples, a greedy search
measured on the whole held-out set (``precision_search``), then the chosen plan is built the normal
way — from its recipe, reusing the calibration — and verified with the target's own kernels: ORT's
reference Q/DQ semantics and, where the target runs its own runtime (``tflite``: LiteRT), that runtime
too, the worse of the two counting. If that verification misses a budget the search reruns with a margin
(up to ``ROUNDS`` times). The best plan found is kept either way; the caller writes it
(``plan.recipe.toml``) and says whether it met the budgets.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import onnx

from dsqc.autoprec.plan_recipe import RECIPE_NAME, parse_plan_recipe, plan_recipe_text
from dsqc.autoprec.plan_space import PlanSpace, build_space, weight_bytes
from dsqc.autoprec.precision_search import Budget, Search, search
from dsqc.autoprec.sensitivity import Sensitivity, analyze_space
from dsqc.autoprec.sensitivity_report import JSON_NAME, PLOT_NAME, write_json, write_plot
from dsqc.autoprec.switch_model import SwitchModel, even_batches
from dsqc.calibration.data import SampleSet
from dsqc.driver.build_types import BuildRequest, rebuild_command
from dsqc.errors import RecipeError
from dsqc.metrics import judged_parts, part_cosine, sqnr_db, take_parts
from dsqc.quant.boosters import BiasCorrector
from dsqc.quant.profile import TargetProfile
from dsqc.quant.quantize import Quantized, quantize_model
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import NodeDecision, Precision, QuantPlan
from dsqc.verify import Feeds, Verification, compare_runs, load_task_metric, run_batches, session, verify

log = logging.getLogger(__name__)
ROUNDS = 3
_STEP = {"sqnr": 0.25, "cosine": 2e-4, "drop": 1e-3}  # extra margin per missed round, besides the gap


class RuntimeRun(Protocol):
    """A QDQ model run on held-out batches by the target's own runtime (``Backend.runtime_outputs``):
    float outputs by name, ``None`` where ORT's run is the target's."""

    def __call__(self, model: onnx.ModelProto, feeds: list[Feeds]) -> dict[str, np.ndarray] | None: ...


def achieved_in_runtime(run: RuntimeRun | None, budget: Budget, fp32: onnx.ModelProto,
                        model: onnx.ModelProto, batches: list[Feeds], labels: np.ndarray | None,
                        task_metric: str | None, mask_padding: bool) -> float | None:
    """What ``model`` achieves in the budget's unit when the target's runtime runs it (``None``: no such
    runtime). On ``tflite`` it can land under ORT's reference: the random-init EfficientNet-B0's repair
    plan measured 15.1 dB in ORT and 14.41 dB in LiteRT against an ok line of 15."""
    got = run(model, batches) if run is not None else None
    if got is None:
        return None
    ref = run_batches(session(fp32), batches)
    return achieved_on(budget, compare_runs(fp32, batches, ref, got, labels, task_metric, mask_padding))


def parse_accuracy_budget(text: str) -> Budget:
    """``sqnr:30`` (dB floor, worst output), ``cosine:0.98`` (floor) or ``drop:0.005`` (task metric)."""
    kind, sep, raw = text.partition(":")
    try:
        value = float(raw)
    except ValueError:
        value = float("nan")
    if not sep or kind not in _STEP or not np.isfinite(value):
        raise RecipeError(f"--accuracy-budget {text!r}: expected sqnr:DB, cosine:FLOOR or drop:MAX "
                          "(e.g. sqnr:30, drop:0.005)")
    return Budget(kind, value)


def check_size_budget(value: float | None) -> float | None:
    if value is not None and not 0 < value <= 1:
        raise RecipeError(f"--size-budget {value}: a fraction of the FP32 weight bytes in (0, 1], e.g. 0.2")
    return value


def check_request(request: BuildRequest) -> None:
    """Fail early on budget flags that cannot work together."""
    if request.size_budget is not None and request.accuracy_budget is None:
        raise RecipeError("--size-budget needs --accuracy-budget (e.g. --accuracy-budget sqnr:30)")
    if request.accuracy_budget is None:
        return
    parse_accuracy_budget(request.accuracy_budget)
    check_size_budget(request.size_budget)
    if request.precision != "int8":
        raise RecipeError("--accuracy-budget picks int4/int8/fp16/fp32 per node; use it with int8")


@dataclass
class Round:
    search: Search
    recipe: Recipe
    quantized: Quantized
    verification: Verification
    achieved: float
    size: int
    recipe_text: str
    margin: float
    in_runtime: float | None = None  # what the target's own runtime measured (``achieved``: the worse)

    def to_dict(self) -> dict[str, Any]:
        return {"predicted_or_measured_reference": self.search.achieved, "achieved": self.achieved,
                "achieved_in_runtime": self.in_runtime, "size_bytes": self.size, "margin": self.margin,
                "evaluations": self.search.evaluations, "steps": len(self.search.steps)}


@dataclass
class AutoPlan:
    """The chosen plan, how it was found, and its numbers against the budgets (``finish`` sets the final)."""

    budget: Budget
    size_budget: float | None
    space: PlanSpace
    sensitivity: Sensitivity
    rounds: list[Round]
    best: Round
    int8_reference: float
    header: list[str]
    achieved: float
    size: int
    quantized_tensors: int = -1  # of the verified build; ``finish`` sets it

    @property
    def recipe(self) -> Recipe:
        return self.best.recipe

    @property
    def quantized(self) -> Quantized:
        return self.best.quantized

    def met(self) -> tuple[bool, bool]:
        size_ok = self.size_budget is None or self.size <= self.size_budget * self.space.fp32_bytes
        return self.budget.met(self.achieved), size_ok

    def failure(self) -> str | None:
        acc_ok, size_ok = self.met()
        if acc_ok and size_ok and self.quantized_tensors == 0:
            return (f"mixed precision met {self.budget} only by keeping every node float: nothing is "
                    f"quantized and the artifact is the FP32 model; the plan is written ({RECIPE_NAME}, "
                    "report.json): relax the budget, verify on more samples (--eval-data), or build with "
                    "--precision fp32")
        if acc_ok and size_ok:
            return None
        missed = []
        if not acc_ok:
            missed.append(f"accuracy budget {self.budget} (best plan: {self.achieved:.4g})")
        if not size_ok:
            missed.append(f"size budget {self.size_budget:g}× FP32 (best plan: "
                          f"{self.size / self.space.fp32_bytes:.3f}×)")
        return (f"mixed precision missed the {' and the '.join(missed)}; the best plan found is written "
                f"({RECIPE_NAME}, report.json): relax a budget or edit the recipe")

    def finish(self, verification: Verification, quantized: Quantized, graph_nodes: int,
               in_runtime: float | None = None) -> dict[str, Any]:
        """Judge the budgets on the build's own verification and model; the report section.
        ``in_runtime``: what the target's own runtime measured of the build, where it is not ORT: the worse
        of it and ORT's counts."""
        reference = float(achieved_on(self.budget, verification))
        self.achieved = reference if in_runtime is None else float(self.budget.worse(reference, in_runtime))
        self.size = weight_bytes(quantized.model)
        self.quantized_tensors = len(quantized.plan.tensors)
        acc_ok, size_ok = (bool(ok) for ok in self.met())
        plan = quantized.plan
        _explain(plan, self.best.search)  # again: a later replan (latency guard) resets reasons
        chosen = {n: plan.nodes[n] for n in self.space.choices if n in plan.nodes}
        above = sum(1 for d in chosen.values() if d.wide or d.precision in (Precision.FP16, Precision.FP32))
        top = [{"node": n.name, "op": n.op, "score_db": n.score("sqnr")} for n in self.sensitivity.nodes[:5]]
        fp32_bytes = self.space.fp32_bytes
        metric = (verification.task or {}).get("metric") if self.budget.kind == "drop" else None
        return {
            "met": acc_ok and size_ok,
            "accuracy": {"budget": str(self.budget), "achieved": self.achieved, "met": acc_ok,
                         "metric": metric,  # the task metric a drop budget is judged on
                         "reference_semantics": reference, "in_runtime": in_runtime,
                         "plain_int8_reference_semantics": float(self.int8_reference)},
            "size": {"budget_fraction": self.size_budget, "bytes": self.size, "fp32_bytes": fp32_bytes,
                     "fraction": self.size / fp32_bytes, "met": size_ok},
            "nodes": {n: {"op": self.space.choices[n].op, "precision": d.label, "reason": d.reason}
                      for n, d in chosen.items()},
            "histogram": _histogram(chosen.values()),
            "above_int8": above, "quantizable_nodes": len(self.space.choices), "graph_nodes": graph_nodes,
            "sensitivity": {"json": JSON_NAME, "plot": PLOT_NAME, "top": top,
                            "samples": self.sensitivity.samples},
            "plan_recipe": RECIPE_NAME,
            "search": {"rounds": [r.to_dict() for r in self.rounds],
                       "steps": [s.to_dict() for s in self.best.search.steps]},
        }

    def write(self, folder: Path, exclude_ops: list[str]) -> list[Path]:
        """``plan.recipe.toml``, ``sensitivity.json`` and ``sensitivity.png`` into ``folder``."""
        text = self.best.recipe_text
        if exclude_ops:
            found = self.best.search
            text = plan_recipe_text(self.space.recipe, found.assignment, found.reasons, self.header,
                                    exclude_ops)
        (folder / RECIPE_NAME).write_text(text)
        write_json(folder / JSON_NAME, self.sensitivity, {"budget": str(self.budget)})
        write_plot(folder / PLOT_NAME, self.sensitivity)
        return [Path(RECIPE_NAME), Path(JSON_NAME), Path(PLOT_NAME)]


def _histogram(decisions: Any) -> dict[str, int]:
    counts: dict[str, int] = {}
    for d in decisions:
        counts[d.label] = counts.get(d.label, 0) + 1
    return dict(sorted(counts.items()))


def choose_precisions(fp32: onnx.ModelProto, profile: TargetProfile, recipe: Recipe, calib: SampleSet,
                      held_out: SampleSet, request: BuildRequest, correct: BiasCorrector | None = None,
                      runtime: RuntimeRun | None = None) -> AutoPlan:
    """Analyse, search and verify until the budgets are met (or ``ROUNDS`` tries); keep the best plan.

    ``correct``: the bias correction the build applies after planning. The switch model evaluates each
    plan with its biases corrected the same way, and each round verifies the model the build will write,
    not the bare plan (NudeNet on ``tflite``, ``drop:0.05``: the bare plan matched 21 of 22 FP32 boxes,
    bias-corrected 20 of 22). Plans are measured as the build plans them (``PlanSpace.planned``).
    ``runtime``: the target's own runtime, where it is not ORT; each round's plan must meet the budget
    there as well, and a round that misses it there searches again with the shortfall as margin."""
    assert request.accuracy_budget is not None
    budget = parse_accuracy_budget(request.accuracy_budget)
    fraction = check_size_budget(request.size_budget)
    if budget.kind == "drop" and held_out.labels is None and not request.task_metric:
        raise RecipeError("--accuracy-budget drop:… needs labels (e.g. --calib mnist, npz 'labels') or "
                          "--task-metric (e.g. box-agreement for a YOLO detector)")
    space = build_space(fp32, profile, recipe, calib, request.calib_batch, int4=fraction is not None)
    switch = SwitchModel(space)
    if correct is not None:  # plans are evaluated bias-corrected, as built
        plain = quantize_model(fp32, profile, recipe, calib, request.calib_batch, known=space.stats)
        correct(plain.model)
        log.info("mixed precision: %d int8 biases bias-corrected as built",
                 switch.correct_int8_biases(correct.bias_shifts))
    sens = analyze_space(space, switch, held_out.take(request.sensitivity_samples), "sqnr", fp16=True)
    evaluate = _evaluator(switch, held_out, budget, request.task_metric)
    int8_reference = evaluate(space.plan8)[0]
    limit = None if fraction is None else fraction * space.fp32_bytes
    batches = list(held_out.batches(request.calib_batch))
    rounds: list[Round] = []
    margin = 0.0
    for _ in range(ROUNDS):
        found = search(space, sens, evaluate, budget, limit, margin)
        header = _header(request, budget, fraction)
        text = plan_recipe_text(recipe, found.assignment, found.reasons, header)
        planned = parse_plan_recipe(text, RECIPE_NAME)
        quantized = quantize_model(fp32, profile, planned, calib, request.calib_batch, known=space.stats)
        _explain(quantized.plan, found)
        built = correct(quantized.model) if correct else quantized.model
        ver = verify(fp32, built, batches, held_out.labels, request.task_metric, latency=False,
                     fused=profile.verify_fused, mask_padding=recipe.mask_padding)
        in_runtime = achieved_in_runtime(runtime, budget, fp32, built, batches, held_out.labels,
                                         request.task_metric, recipe.mask_padding)
        reference = achieved_on(budget, ver)
        achieved = reference if in_runtime is None else budget.worse(reference, in_runtime)
        rounds.append(Round(found, planned, quantized, ver, achieved, weight_bytes(quantized.model), text,
                            margin, in_runtime))
        log.info("mixed precision round %d: %s achieved %.4g (ORT reference%s), %.3f× FP32 bytes",
                 len(rounds), budget, reference, "" if in_runtime is None else
                 f"; {in_runtime:.4g} in the target's runtime", rounds[-1].size / space.fp32_bytes)
        size_ok = limit is None or rounds[-1].size <= limit
        if (budget.met(achieved) and size_ok) or not found.met:
            break
        margin += max(budget.gap(achieved), 0.0) + _STEP[budget.kind]
        if limit is not None and not size_ok:
            limit -= rounds[-1].size - limit
    best = min(rounds, key=lambda r: _shortfall(r, budget, fraction, space.fp32_bytes))
    return AutoPlan(budget, fraction, space, sens, rounds, best, int8_reference,
                    _header(request, budget, fraction), best.achieved, best.size)


def _evaluator(switch: SwitchModel, held_out: SampleSet, budget: Budget, metric_spec: str | None) -> Any:
    bound = switch.bind(even_batches(held_out), segmented=False)
    metric = load_task_metric(metric_spec) if budget.kind == "drop" else None
    fp32_task = metric.fp32(bound.reference, held_out.labels) if metric else 0.0
    parts = judged_parts(bound.reference)  # each output and each scale group of its channels
    reference = take_parts(bound.reference, parts)

    def evaluate(plan: QuantPlan) -> tuple[float, dict[str, float]]:
        outputs = bound.run(plan)
        got = take_parts(outputs, parts)
        noise = {o: _noise(reference[o], got[o]) for o in reference}
        if budget.kind == "sqnr":
            return min(sqnr_db(reference[o], got[o]) for o in reference), noise
        if budget.kind == "cosine":
            return min(part_cosine(reference[o], got[o], parts[o]) for o in reference), noise
        assert metric is not None
        return float(metric.judge(bound.reference, outputs, held_out.labels, fp32_task)["drop"]), noise

    return evaluate


def _noise(ref: np.ndarray, got: np.ndarray) -> float:
    r = ref.astype(np.float64)
    return float(np.sum((r - got) ** 2) / max(float(np.sum(r * r)), 1e-30))


def achieved_on(budget: Budget, ver: Verification) -> float:
    """What ``ver`` (a build's verification) measured in the budget's unit."""
    if budget.kind == "sqnr":
        return ver.min_sqnr
    if budget.kind == "cosine":
        return min(p["cosine"] for m in ver.outputs.values() for p in [m, *m.get("groups", ())])
    if ver.task is None:
        raise RecipeError("--accuracy-budget drop:… needs labels or --task-metric")
    return float(ver.task["drop"])


def _shortfall(r: Round, budget: Budget, fraction: float | None, fp32_bytes: int) -> tuple[float, int]:
    acc = max(budget.gap(r.achieved), 0.0) / max(abs(budget.value), 1e-9)
    size = 0.0 if fraction is None else max(r.size / fp32_bytes - fraction, 0.0) / fraction
    return acc + size, r.size


def _explain(plan: QuantPlan, found: Search) -> None:
    """The search's reason replaces "recipe asks for …" on every node it decided (as it decided it)."""
    for name, reason in found.reasons.items():
        decision = plan.nodes.get(name)
        if decision is not None and decision.label == getattr(found.assignment.get(name), "value", None):
            plan.nodes[name] = NodeDecision(decision.precision, reason, wide=decision.wide)


def _header(request: BuildRequest, budget: Budget, fraction: float | None) -> list[str]:
    size = f", size budget {fraction:g}× FP32 weight bytes" if fraction is not None else ""
    name = Path(request.model_label).name if request.model_label else request.model.name
    return [f"dsqc mixed-precision plan for {name} (target {request.target}): accuracy budget "
            f"{budget}{size}.",
            "Edit a precision (int4 | int8 | int16 | fp16 | fp32, as the target takes them) and rebuild "
            "with:",
            f"  {rebuild_command(request, request.out_dir / RECIPE_NAME)}"]
