"""Orchestration: each quantizer and each measurement in its own subprocess, results merged per case."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bench.cases import Case

REPO = Path(__file__).resolve().parents[2]


# The installed package maps these folders to dsqc (pyproject package-dir).
PACKAGE_DIRS = {"": "compiler", "passes": "passes", "backends": "backends", "models": "models"}


def snapshot_source(dest: Path) -> Path:
    """Copy dsqc's sources to ``dest/dsqc`` laid out as installed; on PYTHONPATH the copy wins over the
    editable install, so every worker of one run sees one source state while others edit the tree."""
    shutil.rmtree(dest, ignore_errors=True)
    skip = shutil.ignore_patterns("__pycache__", "*.pyc")
    for sub, folder in PACKAGE_DIRS.items():
        shutil.copytree(REPO / folder, dest / "dsqc" / sub, ignore=skip, dirs_exist_ok=True)
    return dest


@dataclass(frozen=True)
class Quantizer:
    label: str
    mode: str  # worker mode
    method: str
    reduce_range: bool = False


def default_method() -> str:
    """dsqc's default calibration method, asked of the sources the workers import."""
    code = "from dsqc.quant.recipe import Recipe; print(Recipe().method)"
    try:
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return proc.stdout.strip() or "unknown"


def quantizers(dsqc_methods: list[str], ort_methods: list[str], reduce_range: bool,
               default: str) -> list[Quantizer]:
    """``dsqc`` (a default build), ``dsqc-<method>`` for the other methods, then ORT's quantizers."""
    qs = [Quantizer("dsqc", "quantize-dsqc", "")]
    qs += [Quantizer(f"dsqc-{m}", "quantize-dsqc", m) for m in dsqc_methods if m != default]
    qs += [Quantizer(f"ort-{m.lower()}", "quantize-ort", m) for m in ort_methods]
    if reduce_range:
        qs.append(Quantizer("ort-minmax-rr", "quantize-ort", "MinMax", reduce_range=True))
    return qs


def say(msg: str) -> None:
    sys.stderr.write(f"[bench {time.strftime('%H:%M:%S')}] {msg}\n")
    sys.stderr.flush()


def run_worker(spec: dict[str, Any], folder: Path, tag: str, timeout_s: float = 3600) -> dict[str, Any]:
    """Run ``python -m tools.bench.worker`` on ``spec``; its JSON result, or an error record."""
    spec_path, result = folder / f"{tag}.spec.json", folder / f"{tag}.result.json"
    result.unlink(missing_ok=True)
    spec_path.write_text(json.dumps({**spec, "result": str(result)}, indent=1))
    path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    env = {**os.environ, "PYTHONPATH": path}
    try:
        proc = subprocess.run([sys.executable, "-m", "tools.bench.worker", str(spec_path)], cwd=REPO, env=env,
                              capture_output=True, text=True, timeout=timeout_s)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s"}
    (folder / f"{tag}.log").write_text(proc.stderr)
    if result.exists():
        return dict(json.loads(result.read_text()))
    tail = [line for line in proc.stderr.strip().splitlines() if line.strip()][-1:] or ["no output"]
    return {"ok": False, "error": f"worker exit {proc.returncode} (signal/OOM?): {tail[0][:300]}"}


def bench_case(case: Case, qs: list[Quantizer], rounds: int, runs: int, profile: bool,
               reuse: bool = False) -> dict[str, Any]:
    """Quantize ``case`` with every quantizer (``reuse``: keep an earlier run's models and numbers),
    then evaluate all outputs side by side."""
    folder = Path(case.calib).parent
    quant: dict[str, dict[str, Any]] = {}
    for q in qs:
        out, earlier = folder / f"{q.label}.onnx", folder / f"{q.label}.result.json"
        if reuse and earlier.exists() and (out.exists() or not json.loads(earlier.read_text()).get("ok")):
            quant[q.label] = {**json.loads(earlier.read_text()), "model": str(out)}
            continue
        out.unlink(missing_ok=True)
        spec = {"mode": q.mode, "method": q.method, "reduce_range": q.reduce_range, "fp32": case.fp32,
                "calib": case.calib, "eval": case.eval, "n_calib": case.n_calib, "out": str(out)}
        res = run_worker(spec, folder, q.label)
        res["model"] = str(out)
        quant[q.label] = res
        if res.get("ok"):
            say(f"{case.name}: {q.label} quantized in {res['wall_s']:.1f} s, "
                f"peak RSS {res['peak_rss_mb']:.0f} MB (+{res['delta_rss_mb']:.0f})")
        else:
            say(f"{case.name}: {q.label} FAILED: {res['error']}")
    variants = {k: v["model"] for k, v in quant.items() if v.get("ok") and Path(v["model"]).exists()}
    say(f"{case.name}: evaluating FP32 + {len(variants)} quantized models (SQNR, task, latency x{rounds})")
    spec = {"mode": "evaluate", "fp32": case.fp32, "variants": variants, "eval": case.eval, "kind": case.kind,
            "rounds": rounds, "runs": runs, "profile": profile}
    ev = run_worker(spec, folder, "evaluate")
    if not ev.get("ok"):
        say(f"{case.name}: evaluation FAILED: {ev.get('error')}")
    return {"case": case.to_dict(), "quantize": quant, "evaluation": ev}


def bench_calibration(case: Case, method: str = "entropy", repeats: int = 3) -> dict[str, Any]:
    """Calibration only: dsqc ``calibrate`` vs a plain ORT pass vs ``quantize_static(Entropy)``.

    Every job runs ``repeats`` times, interleaved; the median wall time and the largest peak are kept."""
    folder = Path(case.calib).parent
    base = {"fp32": case.fp32, "calib": case.calib, "n_calib": case.n_calib}
    jobs = {f"dsqc calibrate({method})": {"mode": "calib-dsqc", "method": method},
            "plain ORT FP32 pass": {"mode": "calib-ort-pass"},
            "ORT quantize_static(Entropy)": {"mode": "calib-ort-static", "method": "Entropy"},
            "ORT quantize_static(MinMax)": {"mode": "calib-ort-static", "method": "MinMax"}}
    out: dict[str, Any] = {"model": case.name, "samples": case.n_calib, "batch": 8, "repeats": repeats}
    runs: dict[str, list[dict[str, Any]]] = {label: [] for label in jobs}
    for _ in range(repeats):
        for i, (label, job) in enumerate(jobs.items()):
            runs[label].append(run_worker({**base, **job}, folder, f"calib{i}"))
    for label, rs in runs.items():
        res = next((r for r in rs if not r.get("ok")), None) or _combine(rs)
        out[label] = res
        if res.get("ok"):
            say(f"calibration {label}: {res['wall_s']:.2f} s, peak RSS {res['peak_rss_mb']:.0f} MB"
                f" (+{res['delta_rss_mb']:.0f})")
        else:
            say(f"calibration {label} FAILED: {res.get('error')}")
    return out


def _combine(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """Median wall time and largest peak RSS of repeated runs (each run's wall time kept)."""
    walls, cpus = sorted(r["wall_s"] for r in runs), sorted(r["cpu_s"] for r in runs)
    worst = max(runs, key=lambda r: r["peak_rss_mb"])
    return {**worst, "wall_s": walls[len(walls) // 2], "walls_s": [r["wall_s"] for r in runs],
            "cpu_s": cpus[len(cpus) // 2]}
