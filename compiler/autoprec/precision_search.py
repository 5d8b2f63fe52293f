"""Greedy precision search: most error removed per byte first, every candidate plan measured.

Start every choice at INT4 where a size budget allows it, else at INT8.
While the accuracy budget is not met, apply the move — one node to a higher precision — that removes
the most predicted output noise per cost, where cost = added bytes / FP32 bytes, plus ``1/N`` for a node
leaving INT8/INT4 (so few nodes go above INT8), and moves that would break the size budget are skipped.
The predicted error of a plan is the last measured plan's, scaled by the change of the summed
per-node noise (relative noise power per output, from the sensitivity variants). A plan is measured
when the prediction says the budget is met, every ``REMEASURE_EVERY`` moves, and when moves run out
(task-metric budgets: after every move. A task metric is a step function of the noise, not monotone
along the moves: NudeNet's box agreement on 96 images met ``drop:0.05`` after 33 moves and missed it
after 64, so doubling and bisection would have stopped at 92 moves). Once met, a prune pass demotes
promoted nodes again while the measured plan still meets the budget.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from dsqc.autoprec.plan_space import PlanSpace
from dsqc.autoprec.sensitivity import Sensitivity, noise_to_sqnr
from dsqc.quant.spec import Precision, QuantPlan

log = logging.getLogger(__name__)
_ABOVE_INT8 = (Precision.INT16, Precision.FP16, Precision.FP32)
MAX_PRUNE_TRIES = 24
REMEASURE_EVERY = 8  # moves between measurements while the prediction says the budget is still missed


@dataclass(frozen=True)
class Budget:
    """``sqnr`` floor (dB, worst output), ``cosine`` floor, or task-metric ``drop`` ceiling."""

    kind: str
    value: float

    def met(self, achieved: float, margin: float = 0.0) -> bool:
        if self.kind == "drop":
            return achieved <= self.value - margin
        return achieved >= self.value + margin

    def gap(self, achieved: float) -> float:
        """How far ``achieved`` misses (≥ 0 when missed, in the budget's unit)."""
        return achieved - self.value if self.kind == "drop" else self.value - achieved

    def worse(self, *achieved: float) -> float:
        """The value of ``achieved`` furthest from meeting the budget."""
        return max(achieved, key=self.gap)

    def __str__(self) -> str:
        return f"{self.kind}:{self.value:g}"


@dataclass
class Step:
    node: str
    old: str
    new: str
    predicted: float | None
    measured: float | None
    bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {"node": self.node, "from": self.old, "to": self.new, "predicted": self.predicted,
                "measured": self.measured, "bytes": self.bytes}


@dataclass
class Search:
    assignment: dict[str, Precision]
    reasons: dict[str, str]
    achieved: float
    size: int
    met: bool
    steps: list[Step] = field(default_factory=list)
    evaluations: int = 0


Evaluate = Callable[[QuantPlan], tuple[float, dict[str, float]]]  # plan → (budget metric, noise per output)


def search(space: PlanSpace, sens: Sensitivity, evaluate: Evaluate, budget: Budget, size_limit: float | None,
           margin: float = 0.0) -> Search:
    """Greedy search (see the module docstring); ``evaluate`` measures a plan on held-out samples."""
    nodes = sens.by_name()
    outputs = sens.outputs
    allowed = {n: [p for p in c.options if p is not Precision.INT4 or size_limit is not None]
               for n, c in space.choices.items()}
    noise = {n: {p: nodes[n].noise(p, outputs) if n in nodes else dict.fromkeys(outputs, 0.0)
                 for p in allowed[n]} for n in space.choices}
    current = {n: _floor(allowed[n]) for n in space.choices}
    reasons = {n: _floor_reason(n, p, nodes.get(n), size_limit) for n, p in current.items()}
    state = _State(space, evaluate, budget, margin, outputs)
    achieved = state.measure(current)
    steps: list[Step] = []
    promoted: list[str] = []
    while not budget.met(achieved, margin):
        move = _best_move(space, current, allowed, noise, size_limit)
        if move is None:
            if state.anchor != current:  # out of moves: judge the last plan by measurement
                achieved = state.measure(current)
            break
        name, new = move
        old = current[name]
        current[name] = new
        predicted = state.predict(current, noise)
        measured = None
        stale = len(steps) + 1 - state.measured_at >= REMEASURE_EVERY
        if budget.kind == "drop" or budget.met(predicted, margin) or stale:
            achieved = measured = state.measure(current)
            state.measured_at = len(steps) + 1
        if name not in promoted:
            promoted.append(name)
        reasons[name] = _promotion_reason(name, old, new, len(steps) + 1, nodes.get(name), budget)
        steps.append(Step(name, old.value, new.value, predicted, measured, space.choices[name].nbytes[new]))
        log.info("search step %d: %s %s → %s (predicted %.4g, measured %s)", len(steps), name, old.value,
                 new.value, predicted, "—" if measured is None else f"{measured:.4g}")
    met = budget.met(achieved, margin)
    if met:
        achieved = _prune(space, current, allowed, promoted, reasons, state, achieved)
    size = space.size_of(current)
    met = met and (size_limit is None or size <= size_limit)
    return Search(current, reasons, achieved, size, met, steps, state.evaluations)


def _floor(allowed: list[Precision]) -> Precision:
    """Where every node starts: INT4 when allowed (a size budget), else INT8 — never a float precision,
    even where tiny layers would store FP16 in fewer bytes than INT8 with its scales."""
    return Precision.INT4 if Precision.INT4 in allowed else Precision.INT8


class _State:
    """The last measured plan: the anchor of the noise prediction."""

    def __init__(self, space: PlanSpace, evaluate: Evaluate, budget: Budget, margin: float,
                 outputs: list[str]) -> None:
        self.space, self.evaluate, self.budget = space, evaluate, budget
        self.margin, self.outputs = margin, outputs
        self.anchor: dict[str, Precision] = {}
        self.anchor_noise: dict[str, float] = {}
        self.anchor_value = float("nan")
        self.evaluations = 0
        self.measured_at = 0

    def measure(self, assignment: Mapping[str, Precision]) -> float:
        achieved, noise = self.evaluate(self.space.planned(assignment))
        self.anchor, self.anchor_noise, self.anchor_value = dict(assignment), noise, achieved
        self.evaluations += 1
        return achieved

    def predict(self, assignment: Mapping[str, Precision],
                noise: Mapping[str, Mapping[Precision, Mapping[str, float]]]) -> float:
        """The measured anchor scaled by how the summed per-node noise changed since it, per output."""
        ratio = {}
        for o in self.outputs:
            before = sum(noise[n][p][o] for n, p in self.anchor.items())
            now = sum(noise[n][p][o] for n, p in assignment.items())
            ratio[o] = now / before if before > 0 else (1.0 if now <= 0 else float("inf"))
        if self.budget.kind == "sqnr":
            return noise_to_sqnr({o: self.anchor_noise[o] * ratio[o] for o in self.outputs})
        if self.budget.kind == "cosine":
            return 1.0 - (1.0 - self.anchor_value) * max(ratio.values())
        return float("nan")


def _best_move(space: PlanSpace, current: Mapping[str, Precision], allowed: Mapping[str, list[Precision]],
               noise: Mapping[str, Mapping[Precision, Mapping[str, float]]],
               size_limit: float | None) -> tuple[str, Precision] | None:
    size = space.size_of(current)
    kappa = 1.0 / max(len(space.choices), 1)
    best: tuple[float, str, Precision] | None = None
    for name, p in current.items():
        nb = space.choices[name].nbytes
        for q in allowed[name]:
            gain = sum(noise[name][p].values()) - sum(noise[name][q].values())
            added = nb[q] - nb[p]
            if gain <= 0 or q is p or (size_limit is not None and added > 0 and size + added > size_limit):
                continue
            leaves_int8 = q in _ABOVE_INT8 and p not in _ABOVE_INT8
            cost = max(added, 0) / space.fp32_bytes + (kappa if leaves_int8 else 0.0)
            score = gain / max(cost, 1e-12)
            if best is None or score > best[0]:
                best = (score, name, q)
    return None if best is None else (best[1], best[2])


def _prune(space: PlanSpace, current: dict[str, Precision], allowed: Mapping[str, list[Precision]],
           promoted: list[str], reasons: dict[str, str], state: _State, achieved: float) -> float:
    """Demote promoted nodes (those above INT8 first, the biggest first) while the budget stays met."""
    floor = {n: _floor(allowed[n]) for n in promoted}
    order = sorted(promoted, key=lambda n: (current[n] not in _ABOVE_INT8,
                                            -space.choices[n].nbytes[current[n]]))
    for name in order[:MAX_PRUNE_TRIES]:
        old = current[name]
        current[name] = floor[name]
        measured = state.measure(current)
        log.info("search prune: %s back to %s measures %.4g", name, floor[name].value, measured)
        if state.budget.met(measured, state.margin):
            achieved = measured
            reasons[name] = (f"{floor[name].value}: promoted to {old.value} during the search, demoted back "
                             f"— the plan still meets the budget ({state.budget.kind} {measured:.4g})")
        else:
            current[name] = old
    return achieved


def _floor_reason(name: str, precision: Precision, node: Any, size_limit: float | None) -> str:
    if node is None:
        return f"{precision.value}: not analysed (outside --nodes)"
    parts = [f"{k} alone {node.variants[k].worst('sqnr'):.1f} dB" for k in ("w8", "a8", "w4")
             if k in node.variants]
    alone = f" ({', '.join(parts)})" if parts else ""
    if precision is Precision.INT4:
        return f"int4 weight-only: the cheapest choice under the size budget, never worth promoting{alone}"
    return f"{precision.value}: the default, never worth promoting{alone}"


def _promotion_reason(name: str, old: Precision, new: Precision, step: int, node: Any, budget: Budget) -> str:
    detail = ""
    if node is not None:
        kinds = {"int8": ("w8", "a8"), "int4": ("w4",)}.get(old.value, ())
        parts = [f"{k} alone {node.variants[k].worst('sqnr'):.1f} dB" for k in kinds if k in node.variants]
        detail = f" ({', '.join(parts)})" if parts else ""
    return (f"{new.value}: promoted from {old.value} in search step {step} — the most output error removed "
            f"per byte{detail}, needed for {budget}")
