"""The greedy search on a task-metric budget measures every move and stops at the first plan that meets
it. A toy plan space: ``drop`` is the summed weight of the nodes left int8 (or any function given)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import pytest

from dsqc.autoprec.plan_space import Choice
from dsqc.autoprec.precision_search import Budget, search
from dsqc.autoprec.sensitivity import Measured, NodeSensitivity, Sensitivity
from dsqc.quant.spec import Precision

P = Precision
Assignment = Mapping[str, Precision]


class ToySpace:
    """What ``search`` reads of a ``PlanSpace``; ``planned`` hands the assignment itself to ``evaluate``."""

    def __init__(self, count: int) -> None:
        self.choices = {f"n{i}": Choice(f"n{i}", "Conv", i, f"w{i}", None, [f"w{i}"], False,
                                        options=(P.INT8, P.FP32), nbytes={P.INT8: 10, P.FP32: 40})
                        for i in range(count)}
        self.fp32_bytes = 40 * count

    def planned(self, assignment: Assignment) -> dict[str, Precision]:
        return dict(assignment)

    def size_of(self, assignment: Assignment) -> int:
        return sum(c.nbytes[assignment.get(n, P.FP32)] for n, c in self.choices.items())


def sensitivity(weights: list[float]) -> Sensitivity:
    """Node ``i`` alone at int8 costs ``weights[i]`` of output noise (its w8 variant)."""
    nodes = [NodeSensitivity(f"n{i}", "Conv", i, ["int8", "fp32"], {"int8": 10, "fp32": 40},
                             {"w8": Measured({"y": {"sqnr_db": 30.0}}, {"y": w})})
             for i, w in enumerate(weights)]
    return Sensitivity("sqnr", 8, ["y"], nodes)


def run(weights: list[float], drop: Callable[[dict[str, Precision]], float],
        budget: float) -> tuple[Any, list]:
    seen: list[dict[str, Precision]] = []

    def evaluate(plan: Any) -> tuple[float, dict[str, float]]:
        seen.append(plan)
        return drop(plan), {"y": 0.0}

    found = search(ToySpace(len(weights)), sensitivity(weights), evaluate,  # type: ignore[arg-type]
                   Budget("drop", budget), None)
    return found, seen


def int8_weight(weights: list[float]) -> Callable[[dict[str, Precision]], float]:
    return lambda plan: sum(w for i, w in enumerate(weights) if plan[f"n{i}"] is P.INT8)


def test_a_drop_budget_stops_at_the_first_plan_that_meets_it() -> None:
    weights = [1.0 / (i + 1) for i in range(40)]  # the search promotes n0, n1, n2, … in that order
    total = sum(weights)
    found, seen = run(weights, lambda plan: int8_weight(weights)(plan) / total, 0.30)
    above = sorted((n for n, p in found.assignment.items() if p is P.FP32), key=lambda n: int(n[1:]))
    # the first k with Σ_{i≥k} w_i / Σ w ≤ 0.30, and no fewer: prune demotes none of them
    first = next(k for k in range(41) if sum(weights[k:]) / total <= 0.30)
    assert above == [f"n{i}" for i in range(first)] and found.met
    assert found.achieved == pytest.approx(sum(weights[first:]) / total)
    assert [s.node for s in found.steps] == above and all(s.measured is not None for s in found.steps)
    assert len(seen) == 1 + first + first  # plain int8, every move, one prune try per promoted node


def test_a_metric_that_wobbles_is_not_bisected_past_its_first_meeting_plan() -> None:
    """A box metric misses again after it first meets the budget (NudeNet: met after 33 moves, missed
    after 64): the search must stop at the first plan that meets it, not the one bisection would find."""

    def wobbly(plan: dict[str, Precision]) -> float:
        floats = sum(p is P.FP32 for p in plan.values())
        return {3: 0.05, 4: 0.2, 5: 0.2, 6: 0.2, 7: 0.2, 8: 0.2}.get(floats, 0.3 if floats < 3 else 0.0)

    found, _ = run([1.0 / (i + 1) for i in range(30)], wobbly, 0.10)
    assert found.met and found.achieved == 0.05
    assert [s.node for s in found.steps] == ["n0", "n1", "n2"]
    assert sum(p is P.FP32 for p in found.assignment.values()) == 3


def test_a_budget_no_plan_meets_takes_every_move_and_says_so() -> None:
    found, _ = run([1.0, 0.5, 0.25], lambda plan: 0.5, 0.1)
    assert not found.met and found.achieved == 0.5
    assert all(p is P.FP32 for p in found.assignment.values()) and len(found.steps) == 3


def test_plain_int8_meeting_the_budget_moves_nothing() -> None:
    found, seen = run([1.0, 0.5], lambda plan: 0.0, 0.01)
    assert found.met and not found.steps and len(seen) == 1
