"""Cross-target agreement: the same held-out inputs through every written artifact, each run by its
own runtime (ORT for the onnx/trt Q/DQ models, LiteRT for ``.tflite``, the gcc-compiled testbench
for hls), compared with FP32 and with each other.

Pairwise, an output's difference is counted in LSBs of the coarsest scale any target quantizes that
output with (``max_lsb``: one unit for every pair); where no target quantizes it, only the absolute
difference is given. All
comparisons use the samples every runtime ran: the hls testbench runs its ``tb_vectors`` (the first
held-out samples), so with hls in the set the comparison is on those.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from dsqc.backends.registry import Feeds, WrittenBuild, get_backend
from dsqc.metrics import sqnr_db, top1_agreement
from dsqc.verify import run_batches, session


@dataclass
class Agreement:
    samples: int
    vs_fp32: dict[str, dict[str, Any]] = field(default_factory=dict)  # target → per-output metrics
    pairwise: list[dict[str, Any]] = field(default_factory=list)
    not_run: dict[str, str] = field(default_factory=dict)  # target → why its artifact did not run here

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "vs_fp32": self.vs_fp32, "pairwise": self.pairwise,
                "not_run": self.not_run}

    def lines(self) -> list[str]:
        """The terminal table: each target vs FP32, then every pair."""
        out = [f"agreement on {self.samples} held-out samples (each artifact in its own runtime):"]
        for target, m in self.vs_fp32.items():
            top1 = f", top-1 {m['top1_agreement']:.1%}" if "top1_agreement" in m else ""
            out.append(f"  {target:<8} vs fp32: min SQNR {m['min_sqnr_db']:.2f} dB{top1}  ({m['runtime']})")
        for pair in self.pairwise:
            lsb = f"max {pair['max_lsb']} LSB" if pair["max_lsb"] is not None else \
                f"max |diff| {pair['max_abs_diff']:.4g}"
            top1 = f", top-1 agreement {pair['top1_agreement']:.1%}" if "top1_agreement" in pair else ""
            out.append(f"  {pair['a']:<8} vs {pair['b']:<8}: {lsb}{top1}")
        out += [f"  {t}: not run here — {why}" for t, why in self.not_run.items()]
        return out


def agree(fp32: onnx.ModelProto, builds: dict[str, WrittenBuild], feeds: list[Feeds]) -> Agreement:
    """Run every build's artifact on ``feeds`` and compare (see the module docstring)."""
    outputs: dict[str, dict[str, np.ndarray]] = {}
    not_run: dict[str, str] = {}
    for target, written in builds.items():
        got = get_backend(target).run_artifact(written, feeds)
        if got is None:
            not_run[target] = f"the {target} runtime is not installed"
        else:
            outputs[target] = got
    if not outputs:
        return Agreement(0, not_run=not_run)
    reference = run_batches(session(fp32), feeds)
    n = min(len(v) for got in outputs.values() for v in got.values())
    n = min(n, *(len(v) for v in reference.values()))
    result = Agreement(n, not_run=not_run)
    for target, got in outputs.items():
        result.vs_fp32[target] = _compare(reference, got, n) | {
            "runtime": get_backend(target).runtime_name}
    lsb = {name: _coarsest_scale(builds.values(), name) for name in reference}
    for a, b in itertools.combinations(outputs, 2):
        result.pairwise.append({"a": a, "b": b, **_pair(outputs[a], outputs[b], n, lsb)})
    return result


def _compare(reference: dict[str, np.ndarray], got: dict[str, np.ndarray], n: int) -> dict[str, Any]:
    per_output = {name: round(sqnr_db(ref[:n], got[name][:n].reshape(ref[:n].shape)), 3)
                  for name, ref in reference.items()}
    entry: dict[str, Any] = {"sqnr_db": per_output, "min_sqnr_db": min(per_output.values())}
    first = next(iter(reference))
    if _is_scores(reference[first]):
        entry["top1_agreement"] = top1_agreement(reference[first][:n], got[first][:n].reshape(
            reference[first][:n].shape))
    return entry


def _pair(a: dict[str, np.ndarray], b: dict[str, np.ndarray], n: int,
          lsb: dict[str, float | None]) -> dict[str, Any]:
    worst_lsb: int | None = None
    worst_abs = 0.0
    for name, scale in lsb.items():
        diff = np.abs(a[name][:n].astype(np.float64) - b[name][:n].reshape(a[name][:n].shape))
        worst_abs = max(worst_abs, float(diff.max(initial=0.0)))
        if scale is not None:
            worst_lsb = max(worst_lsb or 0, int(np.rint(diff / scale).max(initial=0)))
    entry: dict[str, Any] = {"max_lsb": worst_lsb, "max_abs_diff": worst_abs}
    first = next(iter(lsb))
    if _is_scores(a[first]):
        entry["top1_agreement"] = top1_agreement(a[first][:n], b[first][:n].reshape(a[first][:n].shape))
    return entry


def _coarsest_scale(builds: Iterable[WrittenBuild], output: str) -> float | None:
    known = [s for s in (_output_scale(w, output) for w in builds) if s is not None]
    return max(known) if known else None


def _output_scale(build: WrittenBuild, output: str) -> float | None:
    spec = build.plan.tensors.get(output) if build.plan is not None else None
    if spec is None or spec.scale.size != 1:
        return None
    return float(spec.scale.reshape(-1)[0])


def _is_scores(x: np.ndarray) -> bool:
    return x.ndim == 2 and x.shape[1] > 1
