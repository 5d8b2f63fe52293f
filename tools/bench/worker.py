"""One quantizer (or calibration pass) in its own process: ``python -m tools.bench.worker SPEC.json``.

The spec names a ``mode``; the worker resets the peak-RSS counter after imports (and, for the
calibration-only modes, after loading the samples), runs the job, and writes wall time, baseline and
peak RSS, and any error to ``spec["result"]``.
"""

from __future__ import annotations

import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Any

from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)

from tools.bench import memory
from tools.bench.data import batches, load_npz

Job = Callable[[dict[str, Any]], dict[str, Any]]
CALIB_BATCH = 8


def quantize_dsqc(spec: dict[str, Any]) -> dict[str, Any]:
    """A full default ``dsqc.driver.pipeline.build`` (target onnx, latency guard on); the wall time leaves out
    the verification phase (a few held-out samples and the FP32/INT8 latency measurement)."""
    from dsqc.driver.build_types import BuildRequest
    from dsqc.driver.pipeline import build

    out_dir = Path(spec["out"]).with_suffix("")
    request = BuildRequest(model=Path(spec["fp32"]), target="onnx", out_dir=out_dir, calib=spec["calib"],
                           calib_samples=spec["n_calib"], calib_batch=CALIB_BATCH, eval_data=spec["eval"],
                           eval_samples=8, method=spec.get("method") or None)
    start = time.perf_counter()
    result = build(request)
    total = time.perf_counter() - start
    model = next(out_dir / a for a in result.artifacts if str(a).endswith(".onnx"))
    Path(spec["out"]).write_bytes(model.read_bytes())
    verify_s = result.timings.get("verify", 0.0)
    return {"wall_s": total - verify_s, "build_s": total, "phases_s": result.timings,
            "warnings": result.warnings, "method": result.metrics.get("calibration", {}).get("method"),
            "latency_guard": result.metrics.get("latency_guard")}


class _Reader(CalibrationDataReader):
    """ORT calibration reader over in-memory batches of ``CALIB_BATCH`` samples."""

    def __init__(self, feeds: dict[str, Any]) -> None:
        self._it = iter(list(batches(feeds, CALIB_BATCH)))

    def get_next(self) -> dict[str, Any] | None:
        return next(self._it, None)


def _quantize_static(fp32: str, out: str, feeds: dict[str, Any], method: str, reduce_range: bool) -> None:
    """ORT's quantizer as its docs recommend for x86: QDQ, per-channel, uint8 activations, int8 weights."""
    reader = _Reader(feeds)
    quantize_static(fp32, out, reader, quant_format=QuantFormat.QDQ, per_channel=True,
                    reduce_range=reduce_range, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=getattr(CalibrationMethod, method))


def quantize_ort(spec: dict[str, Any]) -> dict[str, Any]:
    """``quant_pre_process`` (ORT's documented first step), then ``quantize_static``."""
    from onnxruntime.quantization.shape_inference import quant_pre_process

    start = time.perf_counter()
    feeds, _ = load_npz(Path(spec["calib"]), spec["n_calib"])
    pre, note = str(Path(spec["out"]).with_suffix(".pre.onnx")), ""
    try:
        quant_pre_process(spec["fp32"], pre)
    except Exception as exc:  # fall back to the raw model, as a user would
        pre, note = spec["fp32"], f"quant_pre_process failed ({_first_line(exc)}); raw model quantized"
    pre_s, pre_peak = time.perf_counter() - start, memory.peak_mb()
    memory.reset_peak()  # so quantize_static's own peak is known too; the job's peak is the max
    _quantize_static(pre, spec["out"], feeds, spec["method"], spec.get("reduce_range", False))
    return {"wall_s": time.perf_counter() - start, "pre_process_s": pre_s, "note": note,
            "pre_process_peak_rss_mb": pre_peak, "quantize_static_peak_rss_mb": memory.peak_mb()}


def _normalized(path: str) -> Any:
    """The normalized FP32 model, cached beside ``path``: later workers only ``onnx.load`` it, so their
    baseline RSS holds the model, not the leftovers of normalizing it (as ORT's side gets a saved file)."""
    import onnx

    from dsqc.driver.pipeline import load_and_normalize

    cached = Path(path).with_suffix(".normalized.onnx")
    if not cached.exists():
        onnx.save(load_and_normalize(Path(path)).model, cached)
    return onnx.load(cached)


def placement_tensors(fp32: str) -> list[str]:
    """The tensors dsqc's onnx placement quantizes (also writes the normalized-model cache)."""
    from dsqc.backends.onnx.profile import ONNX_PROFILE
    from dsqc.ir import Model
    from dsqc.quant.planner import place
    from dsqc.quant.recipe import Recipe

    return place(Model.from_proto(_normalized(fp32)), ONNX_PROFILE, Recipe()).activations


def _prepared(fp32: str) -> list[str]:
    """Normalize and plan in a throwaway process, so this worker's baseline holds only the model."""
    cached = Path(fp32).with_suffix(".placement.json")
    if not cached.exists():
        code = ("import json, sys; from tools.bench.worker import placement_tensors; "
                "json.dump(placement_tensors(sys.argv[1]), open(sys.argv[2], 'w'))")
        subprocess.run([sys.executable, "-c", code, fp32, str(cached)], check=True)
    return list(json.loads(cached.read_text()))


def calib_dsqc(spec: dict[str, Any]) -> dict[str, Any]:
    """``dsqc.calibration.calibrate`` on the tensors dsqc's placement would quantize."""
    from dsqc.calibration.data import SampleSet
    from dsqc.calibration.runner import calibrate

    tensors = _prepared(spec["fp32"])
    proto = _normalized(spec["fp32"])
    feeds, _ = load_npz(Path(spec["calib"]), spec["n_calib"])
    samples = SampleSet(feeds, "bench")
    base, cpu = _reset(), _cpu_s()
    start = time.perf_counter()
    stats = calibrate(proto, tensors, samples, method=spec["method"], batch_size=CALIB_BATCH, progress=False)
    return {"wall_s": time.perf_counter() - start, "cpu_s": _cpu_s() - cpu, "base_rss_mb": base,
            "tensors": len(stats)}


def calib_ort_pass(spec: dict[str, Any]) -> dict[str, Any]:
    """A plain FP32 inference pass (session build + every batch), graph outputs only."""
    import onnxruntime as ort

    data = _normalized(spec["fp32"]).SerializeToString()
    feeds, _ = load_npz(Path(spec["calib"]), spec["n_calib"])
    base, cpu = _reset(), _cpu_s()
    start = time.perf_counter()
    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])
    built = time.perf_counter()
    for batch in batches(feeds, CALIB_BATCH):
        sess.run(None, batch)
    end = time.perf_counter()
    return {"wall_s": end - start, "run_s": end - built, "cpu_s": _cpu_s() - cpu, "base_rss_mb": base}


def calib_ort_static(spec: dict[str, Any]) -> dict[str, Any]:
    """``quantize_static`` (QDQ, per channel, U8/S8) on the same normalized model and samples."""
    import onnx

    with tempfile.TemporaryDirectory() as tmp:
        model = str(Path(tmp) / "fp32.onnx")
        onnx.save(_normalized(spec["fp32"]), model)
        feeds, _ = load_npz(Path(spec["calib"]), spec["n_calib"])
        base, cpu = _reset(), _cpu_s()
        start = time.perf_counter()
        _quantize_static(model, str(Path(tmp) / "int8.onnx"), feeds, spec["method"], False)
        return {"wall_s": time.perf_counter() - start, "cpu_s": _cpu_s() - cpu, "base_rss_mb": base}


def evaluate_job(spec: dict[str, Any]) -> dict[str, Any]:
    from tools.bench.evaluate import evaluate

    return evaluate(spec)


MODES: dict[str, Job] = {"quantize-dsqc": quantize_dsqc, "quantize-ort": quantize_ort,
                         "calib-dsqc": calib_dsqc, "calib-ort-pass": calib_ort_pass,
                         "calib-ort-static": calib_ort_static, "evaluate": evaluate_job}


def _cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def _reset() -> float:
    memory.reset_peak()
    return memory.current_mb()


def _first_line(exc: BaseException) -> str:
    lines = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {lines[0] if lines else ''}"[:300]


def main(argv: list[str]) -> int:
    logging.basicConfig(level=logging.WARNING, format="  worker: %(message)s")
    spec = json.loads(Path(argv[0]).read_text())
    import dsqc.driver.pipeline  # (imported outside the measured region in every mode)

    base = _reset()
    start_cpu = _cpu_s()
    try:
        out = {"ok": True, "base_rss_mb": base, **MODES[spec["mode"]](spec)}
    except Exception as exc:
        traceback.print_exc()
        out = {"ok": False, "error": _first_line(exc), "base_rss_mb": base}
    out.setdefault("cpu_s", _cpu_s() - start_cpu)  # all threads, user + system
    out["dsqc_source"] = str(Path(dsqc.driver.pipeline.__file__).parent)
    out["peak_rss_mb"] = max(memory.peak_mb(), out.get("pre_process_peak_rss_mb", 0.0))
    out["delta_rss_mb"] = out["peak_rss_mb"] - out["base_rss_mb"]
    Path(spec["result"]).write_text(json.dumps(out, indent=1, default=str))
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
