"""The few numbers of a finished bundle the fleet page shows, read from its ``report.json`` (and
``manifest.json`` where the bundle has one). Reads files only; the target's own check is phrased by its
backend (``Backend.report_view``, imported when a bundle is summarized)."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

MODEL_SUFFIXES = (".onnx", ".tflite", ".c", ".h")


def summarize_bundle(folder: Path) -> dict[str, Any]:
    """verdict, worst SQNR/cosine, top-1 agreement, task metric, sizes and the target's own check."""
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {"error": "report.json unreadable"}
    metrics = report.get("metrics") or {}
    ver = metrics.get("verification") or {}
    outputs = ver.get("outputs") or {}
    parts = [p for o in outputs.values() for p in [o, *(o.get("groups") or [])]]
    sqnr = [v for o in parts if (v := _num(o.get("sqnr_db"))) is not None]
    cosine = [v for o in parts if (v := _num(o.get("cosine"))) is not None]
    size = ver.get("size_bytes") or {}
    verdict = report.get("verdict") or {}
    summary: dict[str, Any] = {
        "verdict": verdict.get("level"),
        "verdict_reasons": verdict.get("reasons") or [],
        "min_sqnr_db": min(sqnr) if sqnr else None,
        "min_cosine": min(cosine) if cosine else None,
        "top1_agreement": ver.get("top1_agreement"),
        "task": ver.get("task"),
        "detections": ver.get("detections"),
        "size_fp32_bytes": size.get("fp32"),
        "size_bytes": size.get("quantized"),
        "failed": report.get("failed"),
        "quantization": quantization(report),
        "target_check": _target_check(report),
        "report": "report.html" if (folder / "report.html").is_file() else "report.json",
        "has_manifest": (folder / "manifest.json").is_file(),
    }
    return summary


def quantization(report: dict[str, Any]) -> str:
    """How the artifact quantizes, in a few words: static int8, dynamic (activations at run time), a
    mixed plan, and whether the verdict's repair chose it."""
    metrics = report.get("metrics") or {}
    if report.get("precision") == "fp32":
        return "fp32 (nothing quantized, as asked)"
    above = (metrics.get("mixed_precision") or {}).get("above_int8")
    repair = metrics.get("repair") or {}
    if repair.get("kept") == "dynamic":
        return "dynamic, chosen by repair (static int8 missed the verdict's ok line)"
    if repair.get("kept") == "mixed":
        return f"static, {above} nodes above int8, chosen by repair"
    if repair:
        return "static int8 (repair found no better build)"
    if mode := (metrics.get("dynamic") or {}).get("mode"):
        return f"{mode} (--mode {mode})"
    return f"static, {above} nodes above int8 (--accuracy-budget)" if above is not None else "static int8"


def model_artifact_hashes(artifacts: dict[str, str]) -> dict[str, str]:
    """The model files among a bundle's hashes (.onnx/.tflite/.c/.h): what must be identical across runs."""
    return {path: digest for path, digest in artifacts.items() if path.endswith(MODEL_SUFFIXES)}


def _target_check(report: dict[str, Any]) -> str | None:
    """One phrase from the backend's own check (``ReportView.fleet_check``): LiteRT's SQNR, the HLS
    testbench, the TensorRT rules; None for a target not installed here."""
    from dsqc.backends.registry import get_backend
    from dsqc.errors import DsqcError

    try:
        return get_backend(str(report.get("target"))).report_view(report).fleet_check
    except DsqcError:
        return None


def _num(value: Any) -> float | None:
    """report.json writes non-finite floats as strings ("inf")."""
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if not math.isnan(number) else None
