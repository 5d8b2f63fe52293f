"""Per-node sensitivity: quantize one node at a time and measure the model's outputs against FP32.

Each choice of a ``PlanSpace`` gets up to three one-node plans, all restrictions of the one calibrated
INT8 plan (nothing is recalibrated): ``w8`` its weights in INT8 (activations float), ``a8`` its
activation tensors quantized (weights float), and ``w4`` its weights in INT4 where the target takes
INT4. A ``SwitchModel`` runs them on a few held-out samples against cached FP32 outputs. FP16 is not
run: its error is estimated from ``w8`` by the ratio of the weight rounding energies.
"""

from __future__ import annotations

import logging
import re
import sys
import time
from collections.abc import Iterator, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from dsqc.autoprec.plan_space import Choice, PlanSpace, Setting
from dsqc.autoprec.switch_model import BoundSamples, SwitchModel, workers
from dsqc.calibration.data import SampleSet
from dsqc.driver.progress import Progress
from dsqc.errors import RecipeError
from dsqc.metrics import Part, judged_parts, output_metrics, take_parts
from dsqc.quant.qparams import dequantize, quantize
from dsqc.quant.spec import Precision, QuantPlan

log = logging.getLogger(__name__)

METRICS = ("sqnr", "cosine", "kl", "mse")
_KEY = {"sqnr": "sqnr_db", "cosine": "cosine", "kl": "kl", "mse": "mse"}
_HIGHER_IS_BETTER = {"sqnr": True, "cosine": True, "kl": False, "mse": False}
_INT16_NOISE = (8 * 255 / 65535) ** 2  # at the default int16_headroom (profile.py)
VARIANTS = {"w8": Setting("int8", False), "a8": Setting(None, True), "w4": Setting("int4", False)}


@dataclass
class Measured:
    """Error of one plan's outputs against FP32: metrics and relative noise power (Σerr²/Σref²) per output."""

    outputs: dict[str, dict[str, float]]
    noise: dict[str, float]

    def worst(self, metric: str) -> float:
        values = [m[_KEY[metric]] for m in self.outputs.values()]
        return min(values) if _HIGHER_IS_BETTER[metric] else max(values)

    def to_dict(self) -> dict[str, Any]:
        return {"outputs": self.outputs, "noise": self.noise}


def measure(bound: BoundSamples, plan: QuantPlan, parts: Mapping[str, Part]) -> Measured:
    """``plan``'s error on every judged part (each output and scale group of its channels)."""
    got = take_parts(bound.run(plan), parts)
    outputs, noise = {}, {}
    for name, ref in take_parts(bound.reference, parts).items():
        metrics = output_metrics(ref, got[name])
        outputs[name] = {k: metrics[k] for k in ("sqnr_db", "cosine", "mse", "kl")}
        signal = float(np.sum(ref.astype(np.float64) ** 2))
        noise[name] = float(np.sum((ref.astype(np.float64) - got[name]) ** 2)) / max(signal, 1e-30)
    return Measured(outputs, noise)


@dataclass
class NodeSensitivity:
    """One node's measured variants, its byte cost per precision and its rank."""

    name: str
    op: str
    index: int
    options: list[str]
    nbytes: dict[str, int]
    variants: dict[str, Measured] = field(default_factory=dict)
    fp16_noise: dict[str, float] = field(default_factory=dict)
    rank: int = 0

    def score(self, metric: str) -> float:
        """The worse of ``w8`` and ``a8`` under ``metric`` (what INT8 costs this node)."""
        values = [v.worst(metric) for k, v in self.variants.items() if k in ("w8", "a8")]
        if not values:
            return float("inf") if _HIGHER_IS_BETTER[metric] else 0.0
        return min(values) if _HIGHER_IS_BETTER[metric] else max(values)

    def noise(self, precision: Precision, outputs: list[str]) -> dict[str, float]:
        """Predicted relative output noise of this node alone at ``precision`` (INT8 = w8 + a8)."""
        def of(kind: str) -> dict[str, float]:
            return self.variants[kind].noise if kind in self.variants else dict.fromkeys(outputs, 0.0)
        if precision is Precision.INT8:
            return {o: of("w8")[o] + of("a8")[o] for o in outputs}
        if precision is Precision.INT16:  # int16 steps over 8× the range: 32× finer than int8's
            return {o: of("w8")[o] + of("a8")[o] * _INT16_NOISE for o in outputs}
        if precision is Precision.INT4:
            return of("w4")
        if precision is Precision.FP16:
            return self.fp16_noise or dict.fromkeys(outputs, 0.0)
        return dict.fromkeys(outputs, 0.0)

    def to_dict(self, metric: str) -> dict[str, Any]:
        return {"rank": self.rank, "node": self.name, "op": self.op, "score": self.score(metric),
                "options": self.options, "bytes": self.nbytes,
                "variants": {k: v.to_dict() for k, v in self.variants.items()},
                "fp16_noise_estimate": self.fp16_noise}


@dataclass
class Sensitivity:
    """Nodes ranked most sensitive first under ``metric``."""

    metric: str
    samples: int
    outputs: list[str]
    nodes: list[NodeSensitivity]
    timings: dict[str, float] = field(default_factory=dict)

    def by_name(self) -> dict[str, NodeSensitivity]:
        return {n.name: n for n in self.nodes}

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.metric, "samples": self.samples, "outputs": self.outputs,
                "variants": {"w8": "weights int8, activations float", "a8": "activations int8, weights "
                             "float", "w4": "weights int4 (weight-only)"},
                "timings_s": {k: round(v, 4) for k, v in self.timings.items()},
                "nodes": [n.to_dict(self.metric) for n in self.nodes]}


def analyze_space(space: PlanSpace, switch: SwitchModel, samples: SampleSet, metric: str = "sqnr",
                  nodes: str | None = None, progress: bool | None = None, batch_size: int = 64,
                  segments: int = 8, fp16: bool = False) -> Sensitivity:
    """Measure every variant of every choice (or those whose name matches ``nodes``) on ``samples``;
    ``fp16`` adds the FP16 noise estimates the mixed-precision search needs."""
    if metric not in METRICS:
        raise RecipeError(f"--metric {metric!r}: choose one of {', '.join(METRICS)}")
    start = time.perf_counter()
    chosen = _select(space, nodes)
    jobs = [(c, kind, space.restrict({c.name: setting})) for c in chosen for kind, setting in _variants(c)]
    firsts = {id(plan): switch.feeds_for(plan)[1] for _, _, plan in jobs}
    switch.plan_segments(firsts.values(), min(segments, max(1, len(jobs) // 6)))
    bound = switch.bind(list(samples.batches(batch_size)))
    parts = judged_parts(bound.reference)
    outputs = list(parts)
    results = {c.name: _node(c) for c in chosen}
    bar = Progress("sensitivity", len(jobs), sys.stderr.isatty() if progress is None else progress)
    ordered = sorted(jobs, key=lambda j: firsts[id(j[2])])
    with ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="dsqc-sensitivity") as pool:
        futures = {pool.submit(measure, bound, plan, parts): (choice, kind) for choice, kind, plan in ordered}
        for done, future in enumerate(as_completed(futures), 1):
            choice, kind = futures[future]
            results[choice.name].variants[kind] = future.result()
            bar.update(done)
    bar.close()
    for choice in chosen if fp16 else []:
        _estimate_fp16(space, choice, results[choice.name], outputs)
    ranked = sorted(results.values(), key=lambda n: _order(n, metric))
    for rank, node in enumerate(ranked, 1):
        node.rank = rank
    timings = {"variants": time.perf_counter() - start, "runs": float(len(jobs)),
               "segments": float(len(switch.starts))}
    log.info("sensitivity: %d variants of %d nodes in %.2f s", len(jobs), len(chosen), timings["variants"])
    return Sensitivity(metric, len(samples), outputs, ranked, timings)


def _select(space: PlanSpace, pattern: str | None) -> list[Choice]:
    if pattern is None:
        return list(space.choices.values())
    try:
        regex = re.compile(pattern)
    except re.error as exc:
        raise RecipeError(f"--nodes {pattern!r} is not a valid regex ({exc})") from exc
    chosen = [c for c in space.choices.values() if regex.search(c.name)]
    if not chosen:
        raise RecipeError(f"--nodes {pattern!r} matches none of the {len(space.choices)} quantizable nodes")
    return chosen


def _variants(choice: Choice) -> Iterator[tuple[str, Setting]]:
    if choice.weight:
        yield "w8", VARIANTS["w8"]
    if choice.activations:
        yield "a8", VARIANTS["a8"]
    if Precision.INT4 in choice.options:
        yield "w4", VARIANTS["w4"]


def _node(choice: Choice) -> NodeSensitivity:
    return NodeSensitivity(choice.name, choice.op, choice.index, [p.value for p in choice.options],
                           {p.value: b for p, b in choice.nbytes.items()})


def _order(node: NodeSensitivity, metric: str) -> tuple[float, int]:
    score = node.score(metric)
    return (score if _HIGHER_IS_BETTER[metric] else -score, node.index)


def _estimate_fp16(space: PlanSpace, choice: Choice, node: NodeSensitivity, outputs: list[str]) -> None:
    """FP16 noise ≈ w8 noise × ‖W − fp16(W)‖² / ‖W − int8(W)‖² (both are weight rounding noise)."""
    if Precision.FP16 not in choice.options or "w8" not in node.variants or not choice.weight:
        return
    weight = space.consts_of(choice.name)[choice.weight]
    spec = space.plan8.tensors.get(choice.weight)
    if spec is None:
        return
    w = weight.astype(np.float64)
    int8_err = float(np.sum((w - dequantize(quantize(weight, spec), spec)) ** 2))
    fp16_err = float(np.sum((w - weight.astype(np.float16).astype(np.float64)) ** 2))
    ratio = fp16_err / int8_err if int8_err > 0 else 0.0
    node.fp16_noise = {o: node.variants["w8"].noise[o] * ratio for o in outputs}


def noise_to_sqnr(noise: Mapping[str, float]) -> float:
    """Worst output SQNR (dB) of a relative noise power per output."""
    worst = max(noise.values(), default=0.0)
    return float("inf") if worst <= 0 else -10.0 * float(np.log10(worst))
