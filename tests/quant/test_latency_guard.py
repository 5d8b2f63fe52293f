"""The latency guard keeps the plan that beats FP32 with the most int8 nodes (timings faked)."""

from __future__ import annotations

import types

import numpy as np
import pytest

import dsqc.quant.latency_guard as guard_module
from dsqc.quant.spec import NodeDecision, Precision
from dsqc.verify import Timing


def _fake_clock(monkeypatch: pytest.MonkeyPatch, timings: dict[str, float]) -> list[list[str]]:
    """``compare_latency`` answering from ``timings`` (CPU ms); returns the groups it was asked to time."""
    calls: list[list[str]] = []

    def compare(models: list[str], sample: object) -> list[Timing]:
        calls.append(list(models))
        return [Timing(wall_ms=99.0, cpu_ms=timings[m]) for m in models]

    monkeypatch.setattr(guard_module, "compare_latency", compare)
    return calls


def _quantized(tag: str, int8_ops: dict[str, str]) -> types.SimpleNamespace:
    nodes = {name: NodeDecision(Precision.INT8, "x") for name in int8_ops}
    placement = types.SimpleNamespace(op_types={"conv": "Conv", "fc": "Gemm"})
    return types.SimpleNamespace(model=tag, plan=types.SimpleNamespace(nodes=nodes), placement=placement)


def test_guard_keeps_slow_op_type_in_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = _fake_clock(monkeypatch, {"fp32": 1.0, "all": 1.3, "no-Conv": 0.8, "no-Gemm": 1.2})
    base = _quantized("all", {"conv": "Conv", "fc": "Gemm"})

    def replan(ops: frozenset[str]) -> types.SimpleNamespace:
        (op,) = ops
        kept = {"fc": "Gemm"} if op == "Conv" else {"conv": "Conv"}
        return _quantized(f"no-{op}", kept)

    result = guard_module.guard_latency("fp32", base, {"x": np.zeros(1)}, frozenset({"Conv", "Gemm"}),
                                        replan)  # type: ignore[arg-type]
    assert result.kept_fp32_ops == ["Conv"]
    assert result.quantized.model == "no-Conv"
    assert result.quantized.plan.nodes["fc"].precision is Precision.INT8
    assert "slower than FP32" in (result.note() or "")
    assert calls == [["fp32", "all"], ["fp32", "no-Conv", "no-Gemm"]]  # candidates timed side by side


def test_guard_leaves_a_fast_plan_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    _fake_clock(monkeypatch, {"fp32": 1.0, "all": 0.5})
    base = _quantized("all", {"conv": "Conv"})
    result = guard_module.guard_latency("fp32", base, {}, frozenset({"Conv"}),  # type: ignore[arg-type]
                                        lambda ops: pytest.fail("no replan expected"))
    assert result.quantized is base and result.kept_fp32_ops == []


def _conv_gemm_guard(monkeypatch: pytest.MonkeyPatch,
                     timings: dict[str, float]) -> tuple[types.SimpleNamespace, guard_module.GuardResult]:
    """The guard on an all-int8 Conv + Gemm plan whose one-op-float candidates take ``timings``."""
    _fake_clock(monkeypatch, {"fp32": 1.0, **timings})
    base = _quantized("all", {"conv": "Conv", "fc": "Gemm"})

    def replan(ops: frozenset[str]) -> types.SimpleNamespace:
        (op,) = ops
        return _quantized(f"no-{op}", {"fc": "Gemm"} if op == "Conv" else {"conv": "Conv"})

    result = guard_module.guard_latency("fp32", base, {}, frozenset({"Conv", "Gemm"}),  # type: ignore[arg-type]
                                        replan)
    return base, result


def test_guard_trades_no_int8_node_for_noise(monkeypatch: pytest.MonkeyPatch) -> None:
    """All-int8 at 1.14× FP32 and keeping Conv float 6 % faster (EfficientNet-B0 on a busy 2-core AVX2
    CPU, where int8 and FP32 convs run alike): noise, not a slow kernel; the int8 plan stays."""
    base, result = _conv_gemm_guard(monkeypatch, {"all": 1.14, "no-Conv": 1.07, "no-Gemm": 1.12})
    assert result.quantized is base and result.kept_fp32_ops == []
    assert result.trials["Conv fp32"] == pytest.approx(1.07)


def test_guard_takes_the_fastest_when_nothing_beats_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    _, result = _conv_gemm_guard(monkeypatch, {"all": 1.3, "no-Conv": 1.05, "no-Gemm": 1.25})
    assert result.quantized.model == "no-Conv" and result.kept_fp32_ops == ["Conv"]
