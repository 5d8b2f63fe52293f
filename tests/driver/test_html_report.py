"""report.html pieces without a build: several targets side by side, escaping, the fixed-point form, the
histogram's clipping range and its SQNR estimate."""

from __future__ import annotations

import re

import numpy as np

from dsqc.calibration.histogram import GridHistogram
from dsqc.driver.histograms import _display, _estimated_sqnr
from dsqc.driver.html.charts import histogram_svg
from dsqc.driver.html.report import render_report
from dsqc.driver.html.sections import fixed_point
from dsqc.quant.spec import QuantSpec

EVIL = "<img src=x onerror=alert(1)>"


def _report(target: str, sqnr: float) -> dict:
    spec = {"dtype": "int8", "scale": 0.03125, "zero_point": 0, "axis": None}
    return {"target": target, "precision": "int8", "artifacts": [f"m.int8.{target}"], "warnings": [EVIL],
            "verdict": {"level": "ok", "reasons": [], "thresholds": {"degraded_sqnr_db": 15.0}},
            "plan": {"nodes": {EVIL: {"precision": "int8", "reason": f"because {EVIL}"}},
                     "tensors": {EVIL: spec}},
            "metrics": {"verification": {"outputs": {EVIL: {"sqnr_db": sqnr, "cosine": 0.999, "mse": 0.1}},
                                         "samples": 8}}}


def test_several_targets_render_side_by_side_and_escaped() -> None:
    manifest = {"model": {"path": EVIL, "sha256": "ab" * 32}, "versions": {"dsqc": "0.1.0"},
                "command": ["dsqc", "build", EVIL], "files": {EVIL: {"sha256": "cd" * 32, "bytes": 3}}}
    html = render_report([_report("onnx", 30.0), _report("tflite", 25.0)], manifest)
    assert "<img" not in html and EVIL not in html
    accuracy = html.split('id="accuracy"', 1)[1].split("</section>", 1)[0]
    assert accuracy.count("&lt;img src=x onerror=alert(1)&gt;") == 2
    assert re.search(r"<td>onnx</td>.*30</td>.*<td>tflite</td>.*25</td>", accuracy)
    precision = html.split('id="precision"', 1)[1].split("</section>", 1)[0]
    assert "<th>node</th><th>onnx</th><th>tflite</th>" in precision  # one row per node, a column per target
    assert "because &lt;img" in precision


def test_fixed_point_form() -> None:
    assert fixed_point(np.array([0.03125, 0.0625])) == "pow2: 2^-4, 2^-5"
    text = fixed_point(np.array(0.1))
    multiplier, shift = (int(v) for v in re.match(r"(\d+)·2\^-(\d+)", text).groups())  # type: ignore[union-attr]
    assert 1 << 30 <= multiplier < 1 << 31 and abs(multiplier / 2.0**shift - 0.1) < 1e-9


def test_histogram_estimate_matches_quantizing_the_data() -> None:
    data = np.random.default_rng(0).normal(0, 1, 200_000).astype(np.float32)
    hist = GridHistogram()
    hist.update(data)
    spec = QuantSpec("int8", np.float32(3.0 / 127), np.int64(0))  # clips the tails beyond 3 sigma
    q = np.clip(np.rint(data / spec.scale), -128, 127) * spec.scale
    exact = 10 * np.log10(np.sum(data.astype(np.float64) ** 2) / np.sum((data - q).astype(np.float64) ** 2))
    assert abs(_estimated_sqnr(hist, spec) - exact) < 0.3
    shown = _display("t", hist, spec, 0.0)
    assert shown["clip"] == [-128 * float(spec.scale), 127 * float(spec.scale)]
    assert 0.002 < shown["clipped_fraction"] < 0.004  # P(|x| > 3σ) = 0.27 %
    assert sum(shown["counts"]) == data.size
    svg = histogram_svg(shown)
    assert svg.count('stroke="#b3261e"') == 2 and 'fill="#b3261e"' in svg  # the limits, and clipped bars
