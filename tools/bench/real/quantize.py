"""The quantizers compared, each in its own process: dsqc through its command line (so whatever dsqc is
installed is what gets measured) and ONNX Runtime's ``quantize_static`` (``python -m
tools.bench.real.quantize SPEC.json``)."""

from __future__ import annotations

import json
import logging
import os
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tools.bench.real.store import REPO

log = logging.getLogger(__name__)
DSQC_METHODS = ("minmax", "auto", "percentile", "entropy", "mse")
ORT_METHODS = ("MinMax", "Entropy", "Percentile")
CALIB_BATCH = 8


@dataclass(frozen=True)
class Job:
    """One quantization of one case: ``tool`` dsqc (``method`` "" = default) or ort."""

    tool: str
    method: str = ""
    reduce_range: bool = False

    @property
    def label(self) -> str:
        if self.tool == "dsqc":
            return f"dsqc-{self.method}" if self.method else "dsqc"
        return f"ort-{self.method.lower()}{'-rr' if self.reduce_range else ''}"


def jobs(
    dsqc_methods: tuple[str, ...] = DSQC_METHODS,
    ort_methods: tuple[str, ...] = ORT_METHODS,
    reduce_range: tuple[bool, ...] = (False, True),
) -> list[Job]:
    """dsqc default (no --method), dsqc with each method, ORT's methods × reduce_range off/on."""
    out = [Job("dsqc")] + [Job("dsqc", m) for m in dsqc_methods]  # the default may change: all run
    return out + [Job("ort", m, rr) for m in ort_methods for rr in reduce_range]


VERIFY_SAMPLES = 16


def dsqc_data(calib: Path, n: int, folder: Path) -> list[str]:
    """dsqc's data arguments: the first ``n`` samples of ``calib`` (what ORT calibrates on) and, where the
    file holds ``VERIFY_SAMPLES`` more, those as ``--eval-data`` (dsqc verifies, selects a range method
    and repairs a degraded build on them); otherwise dsqc holds out the last fifth of the ``n`` as its
    default does. Either way it never sees the held-out set the table measures on."""
    import numpy as np

    first, rest = folder / f"calib_first{n}.npz", folder / f"calib_after{n}.npz"
    with np.load(calib) as data:
        arrays = {k: data[k] for k in data.files}
    np.savez(first, **{k: v[:n] for k, v in arrays.items()})
    args = ["--calib", str(first), "--calib-samples", str(n)]
    if min(len(v) for v in arrays.values()) >= n + VERIFY_SAMPLES:
        np.savez(rest, **{k: v[n : n + VERIFY_SAMPLES] for k, v in arrays.items()})
        args += ["--eval-data", str(rest), "--eval-samples", str(VERIFY_SAMPLES)]
    return args


def run(
    job: Job, fp32: Path, calib: Path, n_calib: int, folder: Path, timeout_s: float = 1800,
    reuse_ort: bool = False,
) -> dict[str, Any]:
    """Quantize ``fp32`` into ``folder/<label>.onnx``; ``{"ok", "model", "wall_s", ...}`` or an error.
    ``reuse_ort``: an ORT model an earlier run left in ``folder`` is evaluated again, not rebuilt (ORT's
    quantizer does not change between dsqc commits; its histogram calibrations take most of the time)."""
    fp32, calib, folder = (p.resolve() for p in (fp32, calib, folder))
    out = folder / f"{job.label}.onnx"
    if reuse_ort and job.tool == "ort" and out.exists():
        return {"ok": True, "model": str(out), "wall_s": float("nan"), "reused": True}
    out.unlink(missing_ok=True)
    if job.tool == "dsqc":
        build_dir = folder / job.label
        shutil.rmtree(build_dir, ignore_errors=True)
        cmd = [
            str(Path(sys.executable).with_name("dsqc")),
            "build",
            str(fp32),
            "--target",
            "onnx",
            *dsqc_data(calib, n_calib, folder),
            "-o",
            str(build_dir),
        ]
        cmd += ["--method", job.method] if job.method else []
    else:
        spec = folder / f"{job.label}.spec.json"
        # reduce_range changes only the quantization: its run reuses the same method's ranges through
        # ORT's own calibration cache, written by the reduce_range=False run just before.
        cache = folder / f"ort-{job.method.lower()}.ranges.json"
        if not job.reduce_range:
            cache.unlink(missing_ok=True)
        spec.write_text(
            json.dumps(
                {
                    "fp32": str(fp32),
                    "calib": str(calib),
                    "n_calib": n_calib,
                    "out": str(out),
                    "method": job.method,
                    "reduce_range": job.reduce_range,
                    "cache": str(cache),
                }
            )
        )
        cmd = [sys.executable, "-m", "tools.bench.real.quantize", str(spec)]
    start = time.perf_counter()
    try:
        # cwd: ORT's quant_pre_process leaves temporary *.data / sym_shape_infer_temp.onnx in the cwd
        env = {
            **os.environ,
            "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
        }
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s, cwd=folder, env=env)
    except subprocess.TimeoutExpired:
        return {"ok": False, "error": f"timed out after {timeout_s:.0f} s", "command": cmd}
    wall = time.perf_counter() - start
    (folder / f"{job.label}.log").write_text(proc.stdout + proc.stderr)
    if job.tool == "dsqc" and proc.returncode == 0:
        found = sorted((folder / job.label).glob("*.int8.onnx"))
        if found:
            shutil.copyfile(found[0], out)
    if proc.returncode != 0 or not out.exists():
        lines = [x for x in (proc.stderr or proc.stdout).strip().splitlines() if x.strip()] or ["no output"]
        return {
            "ok": False,
            "error": f"exit {proc.returncode}: {lines[-1][:300]}",
            "command": cmd,
            "wall_s": wall,
        }
    return {"ok": True, "model": str(out), "wall_s": wall, "command": cmd}


def ort_quantize(spec: dict[str, Any]) -> None:
    """ORT as its docs recommend for x86: ``quant_pre_process`` (raw model if it fails), then
    ``quantize_static`` QDQ, per channel, uint8 activations, int8 weights."""
    import numpy as np
    from onnxruntime.quantization import (
        CalibrationDataReader,
        CalibrationMethod,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    with np.load(spec["calib"]) as npz:
        feeds = {k: npz[k][: spec["n_calib"]] for k in npz.files}
    n = len(next(iter(feeds.values())))

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._starts = iter(range(0, n, CALIB_BATCH))

        def get_next(self) -> dict[str, Any] | None:
            s = next(self._starts, None)
            return None if s is None else {k: v[s : s + CALIB_BATCH] for k, v in feeds.items()}

    pre = str(Path(spec["out"]).with_suffix(".pre.onnx"))
    try:
        quant_pre_process(spec["fp32"], pre)
    except Exception as exc:
        log.warning("quant_pre_process failed (%s); quantizing the raw model", exc)
        pre = spec["fp32"]
    quantize_static(
        pre,
        spec["out"],
        Reader(),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        reduce_range=spec["reduce_range"],
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
        calibrate_method=getattr(CalibrationMethod, spec["method"]),
        calibration_cache_path=spec.get("cache"),
    )
    Path(pre).unlink(missing_ok=True) if pre != spec["fp32"] else None


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    ort_quantize(json.loads(Path(sys.argv[1]).read_text()))
