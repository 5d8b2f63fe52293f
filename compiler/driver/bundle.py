"""A build folder is a hand-off bundle: the artifacts, ``report.json``, ``report.html``, agreement vectors
(``check/``), ``manifest.json`` (hashes and provenance) and ``build_info.json`` (the time; unhashed).

The pipeline calls ``record`` before it writes report.json (histograms and agreement vectors go into the
report) and ``seal`` last, inside the staging folder, so the manifest hashes every file as it will be.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dsqc.backends.registry import WrittenBuild, io_names, ort_run
from dsqc.calibration.data import SampleSet
from dsqc.driver import check_vectors
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.histograms import activation_histograms
from dsqc.driver.html.report import render_report
from dsqc.driver.manifest import (
    MANIFEST_NAME,
    Provenance,
    build_manifest,
    file_entry,
    file_hashes,
    sha256_arrays,
    sha256_source,
    volatile_metrics,
    write_manifest,
)

HTML_NAME = "report.html"
__all__ = ["HTML_NAME", "MANIFEST_NAME", "calibration_provenance", "record", "seal", "write_index_html"]


def record(staging: Path, request: BuildRequest, result: BuildResult, fp32: onnx.ModelProto,
           source: onnx.ModelProto, calib: SampleSet | None, eval_feeds: list[dict[str, np.ndarray]]) -> None:
    """Gates, histograms of the most sensitive activations and the agreement vectors, into ``result``."""
    result.metrics["gates"] = {"min_sqnr": request.min_sqnr, "max_drop": request.max_drop,
                               "strict": request.strict}
    if result.plan is not None and calib is not None:
        mp = result.metrics.get("mixed_precision") or {}
        ranked = [row["node"] for row in (mp.get("sensitivity") or {}).get("top", []) if "node" in row]
        result.metrics["histograms"] = activation_histograms(source, result.plan, calib, request.calib_batch,
                                                             ranked or None)
    written = WrittenBuild(staging, list(result.artifacts), result.options, result.metrics, result.plan,
                           *io_names(fp32))
    section = check_vectors.record(written, result.target, eval_feeds, lambda feeds: _run_fp32(fp32, feeds))
    if section is not None:
        result.metrics["check_vectors"] = section
        recorded = (*section.get("inputs", []), *section.get("outputs", []))
        result.artifacts += [Path(e["file"]) for e in recorded]
        result.artifacts += [Path(e["fp32_file"]) for e in section.get("outputs", []) if "fp32_file" in e]


def calibration_provenance(request: BuildRequest, result: BuildResult, calib: SampleSet | None,
                           held_out: SampleSet | None) -> dict[str, Any]:
    """The calibration source as given, the file/folder hash where it is one, and the samples' hash."""
    info: dict[str, Any] = {"source": request.calib, "source_sha256": sha256_source(request.calib),
                            "eval_source": request.eval_data, "eval_sha256": sha256_source(request.eval_data)}
    if calib is not None:
        info.update(samples=len(calib), samples_sha256=sha256_arrays(calib.feeds))
    if held_out is not None:
        info.update(eval_samples=len(held_out), eval_samples_sha256=sha256_arrays(held_out.feeds))
    info["method"] = (result.metrics.get("calibration") or {}).get("method")
    return info


def seal(staging: Path, request: BuildRequest, result: BuildResult, calibration: dict[str, Any]) -> None:
    """Write report.html, then manifest.json over every file, then build_info.json."""
    report = json.loads((staging / "report.json").read_text(encoding="utf-8"))
    provenance = Provenance(command=list(request.command_line or []),
                            model_label=request.model_label or str(request.model),
                            model_path=request.model, recipe_path=request.recipe, calibration=calibration)
    files = file_hashes(staging)  # every file but the page itself, shown in the page
    preview = build_manifest(staging, report, provenance, files)
    (staging / HTML_NAME).write_text(render_report([report], preview), encoding="utf-8")
    files[HTML_NAME] = file_entry(staging / HTML_NAME)
    manifest = build_manifest(staging, report, provenance, dict(sorted(files.items())))
    write_manifest(staging, manifest, result.timings, volatile_metrics(result.metrics))


def _run_fp32(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    wanted = {i.name for i in model.graph.input}
    outputs = ort_run(model, [{k: v for k, v in feeds.items() if k in wanted}])
    return {n: np.asarray(v, np.float32) for n, v in outputs.items()}


def write_index_html(folder: Path, targets: list[str], agreement: dict[str, Any] | None) -> None:
    """``OUT/report.html`` of a multi-target build: every target's report side by side, the agreement,
    and the files of every target bundle (each checked by ``dsqc verify OUT``)."""
    reports = [json.loads((folder / t / "report.json").read_text(encoding="utf-8")) for t in targets]
    manifests = [json.loads((folder / t / MANIFEST_NAME).read_text(encoding="utf-8")) for t in targets]
    merged = dict(manifests[0])
    merged["files"] = {f"{t}/{name}": entry for t, m in zip(targets, manifests, strict=True)
                       for name, entry in m["files"].items()}
    (folder / HTML_NAME).write_text(render_report(reports, merged, agreement), encoding="utf-8")
