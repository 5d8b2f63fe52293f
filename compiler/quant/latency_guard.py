"""Latency guard: an int8 plan must not run slower than FP32 on the target's own runtime.

Per-op int8 kernels do not always pay (on AVX2 CPUs without VNNI, ORT's QLinearConv on 16–32 channel
maps is slower than its float NCHWc conv). When the whole int8 model is slower than FP32, the guard
tries keeping one compute op type at a time in FP32 and keeps a plan that beats FP32 and all-int8 by a
clear margin, preferring the one that leaves the most nodes in int8. Calibration statistics are reused.

Plans are timed side by side (``compare_latency``: interleaved rounds, calling-thread CPU time of a
one-thread session), so other jobs on the machine neither slow one plan down nor favour another; the
all-int8 plan is timed again beside the candidates, and they are judged against that paired reading, not
against the first one (timed apart, it alone moved EfficientNet-B0's all-int8 by ±10 % from build to
build on a busy 2-core CPU, and a float op type came out ahead by that noise).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx

from dsqc.quant.quantize import Quantized
from dsqc.quant.spec import NodeDecision, Precision
from dsqc.verify import compare_latency

log = logging.getLogger(__name__)
Feeds = dict[str, np.ndarray]
MARGIN = 0.97  # a candidate must beat FP32 by 3 % to count: timings still carry a little noise
GAIN = 0.90  # and all-int8 by 10 %: int8 nodes (4× smaller weights) are not traded for noise. Where int8
# and FP32 kernels run alike (EfficientNet-B0 on a busy 2-core AVX2 Xeon) all-int8 measured 0.96–1.14×
# FP32 over six builds of one graph and a different op type came out 3–9 % faster in each; where int8
# loses for real, keeping the op float gains 12 % (MNIST CNN on AVX-512 VNNI) to 40 % (on AVX2)


@dataclass
class GuardResult:
    quantized: Quantized
    kept_fp32_ops: list[str] = field(default_factory=list)
    trials: dict[str, float] = field(default_factory=dict)

    def note(self) -> str | None:
        if not self.trials or (not self.kept_fp32_ops and self.trials["all int8"] <= 1.0):
            return None  # all-int8 beat FP32 (when timed again beside the candidates)
        tried = ", ".join(f"{k} {v:.2f}×" for k, v in self.trials.items())
        if self.kept_fp32_ops:
            return (f"latency guard: kept {', '.join(self.kept_fp32_ops)} in fp32 because int8 was slower "
                    f"than FP32 on this machine (INT8/FP32 by plan: {tried})")
        return f"latency guard: no plan beat FP32 on this machine (INT8/FP32 by plan: {tried})"


def guard_latency(fp32: onnx.ModelProto, quantized: Quantized, sample: Feeds, compute_ops: frozenset[str],
                  replan: Callable[[frozenset[str]], Quantized]) -> GuardResult:
    """Return ``quantized`` if it beats FP32, else, of the plans with one op type kept in FP32 that run
    ``GAIN`` faster than all-int8, the one that beats FP32 with the most int8 nodes — or, when none
    beats FP32, the fastest."""
    base, first = (t.cpu_ms for t in compare_latency([fp32, quantized.model], sample))
    ratio = first / base
    result = GuardResult(quantized, trials={"all int8": ratio})
    if ratio <= 1.0:
        return result
    present = sorted({_op_of(quantized, name) for name, d in quantized.plan.nodes.items()
                      if d.precision is Precision.INT8} & compute_ops)
    best: tuple[float, int, str, Quantized] | None = None
    fastest: tuple[float, int, str, Quantized] | None = None
    candidates = [replan(frozenset({op})) for op in present]
    timings = [t.cpu_ms for t in compare_latency([fp32, quantized.model, *(c.model for c in candidates)],
                                                 sample)]
    ratio = timings[1] / timings[0]  # all-int8 beside the candidates: what they are judged against
    result.trials["all int8"] = ratio
    if ratio <= 1.0:  # the first reading was noise
        return result
    for op, candidate, ms in zip(present, candidates, timings[2:], strict=True):
        trial = ms / timings[0]
        result.trials[f"{op} fp32"] = trial
        int8_nodes = sum(d.precision is Precision.INT8 for d in candidate.plan.nodes.values())
        log.info("latency guard: %s kept fp32 → INT8/FP32 %.2f", op, trial)
        if trial > ratio * GAIN:
            continue
        if trial <= MARGIN and (best is None or (int8_nodes, -trial) > (best[1], -best[0])):
            best = (trial, int8_nodes, op, candidate)
        if fastest is None or trial < fastest[0]:
            fastest = (trial, int8_nodes, op, candidate)
    best = best or fastest  # nothing beat FP32: still take a clearly faster plan than all-int8
    if best is not None:
        result.quantized, result.kept_fp32_ops = best[3], [best[2]]
        why = NodeDecision(Precision.FP32, f"latency guard: int8 {best[2]} ran slower than FP32 here")
        plan, before = best[3].plan, quantized.plan.nodes
        for name in plan.nodes:  # only nodes the guard demoted: a recipe exclusion keeps its own reason
            demoted = plan.nodes[name].precision is Precision.FP32 and name in before \
                and before[name].precision in (Precision.INT8, Precision.INT4)
            if demoted and best[3].placement.op_types.get(name) == best[2]:
                plan.nodes[name] = why
    return result


def _op_of(quantized: Quantized, node_name: str) -> str:
    return quantized.placement.op_types.get(node_name, "")
