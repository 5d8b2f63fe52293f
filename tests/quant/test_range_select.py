"""The range method ``select`` (opt-in): min/max vs percentile, cross-fitted on calibration samples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save

from dsqc.calibration.data import SampleSet
from dsqc.quant.range_select import MEASURE_SAMPLES

WIDTH = 2048


def _relu_matmul(path: Path) -> Path:
    """y = Relu(x) @ W: a hidden activation whose rare spikes decide what min/max costs."""
    w = (np.random.default_rng(0).normal(size=(WIDTH, 8)) / np.sqrt(WIDTH)).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [numpy_helper.from_array(w, "w")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _relu_gemm(path: Path) -> Path:
    """y = Relu(x) @ W + b with small positive-mean weights: bias correction moves its output."""
    rng = np.random.default_rng(0)
    w = (rng.normal(size=(WIDTH, 8)) / np.sqrt(WIDTH) + 0.01).astype(np.float32)
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Gemm", ["r", "w", "b"], ["y"], name="gemm")]
    graph = helper.make_graph(nodes, "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8])],
                              [numpy_helper.from_array(w, "w"),
                               numpy_helper.from_array(np.full(8, 0.5, np.float32), "b")])
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _data(path: Path, spikes: bool, n: int = 64) -> Path:
    rng = np.random.default_rng(1)
    x = rng.normal(size=(n, WIDTH)).astype(np.float32)
    if spikes:  # one huge value in a few early samples: what min/max stretches its grid for
        x[[0, 5, 11], [3, 700, 1500]] = 400.0
    np.savez(path, x=x)
    return path


def _build(tmp_path: Path, data: Path, name: str, model: Path | None = None) -> dict:
    out = tmp_path / name
    model = model or _relu_matmul(tmp_path / "m.onnx")
    proc = subprocess.run([sys.executable, "-m", "dsqc", "build", str(model),
                           "--target", "onnx", "--calib", str(data), "--method", "select", "--no-latency",
                           "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert "range method: " in proc.stdout
    return json.loads((out / "report.json").read_text())["metrics"]


def test_rare_spikes_choose_percentile_and_the_choice_is_recorded(tmp_path: Path) -> None:
    metrics = _build(tmp_path, _data(tmp_path / "spiky.npz", spikes=True), "spiky")
    chosen = metrics["range_method"]
    scores = chosen["candidates_sqnr_db"]
    assert chosen["chosen"] == "percentile" and scores["percentile"] > scores["minmax"] + 6, chosen
    assert chosen["samples"] == MEASURE_SAMPLES
    assert chosen["fit_samples"] == metrics["calibration"]["samples"] - MEASURE_SAMPLES
    assert metrics["calibration"]["method"] == "percentile"


def test_no_spikes_keep_minmax(tmp_path: Path) -> None:
    chosen = _build(tmp_path, _data(tmp_path / "plain.npz", spikes=False), "plain")["range_method"]
    assert chosen["chosen"] == "minmax", chosen


def test_an_explicit_method_is_not_second_guessed(tmp_path: Path) -> None:
    out = tmp_path / "o"
    proc = subprocess.run([sys.executable, "-m", "dsqc", "build", str(_relu_matmul(tmp_path / "m.onnx")),
                           "--target", "onnx", "--calib", str(_data(tmp_path / "d.npz", spikes=True)),
                           "--method", "minmax", "--no-latency", "--no-repair", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert "range_method" not in metrics and metrics["calibration"]["method"] == "minmax"


def test_measured_samples_are_the_last_ones_and_disjoint() -> None:
    samples = SampleSet({"x": np.arange(40, dtype=np.float32)[:, None]}, "t")
    fit, measure = samples.split(MEASURE_SAMPLES)
    assert not set(fit.feeds["x"].ravel()) & set(measure.feeds["x"].ravel())
    assert len(measure) == MEASURE_SAMPLES and len(fit) + len(measure) == 40


def test_candidates_are_scored_as_the_build_makes_and_verifies_them(tmp_path: Path) -> None:
    """A candidate's score is what a build with that method, calibrated on the fitting samples and
    verified on the measuring ones, reports: bias correction and the verification runtime included."""
    data, model = _data(tmp_path / "plain.npz", spikes=False), _relu_gemm(tmp_path / "gemm.onnx")
    chosen = _build(tmp_path, data, "select", model)["range_method"]
    x = np.load(data)["x"]
    fit, measure = tmp_path / "fit.npz", tmp_path / "measure.npz"
    np.savez(fit, x=x[: chosen["fit_samples"]])
    np.savez(measure, x=x[chosen["fit_samples"]: chosen["fit_samples"] + chosen["samples"]])
    for method, score in chosen["candidates_sqnr_db"].items():
        out = tmp_path / method
        proc = subprocess.run([sys.executable, "-m", "dsqc", "build", str(model), "--target", "onnx",
                               "--calib", str(fit), "--eval-data", str(measure), "--method", method,
                               "--calib-samples", str(chosen["fit_samples"]), "--no-latency", "-o", str(out)],
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr
        verified = json.loads((out / "report.json").read_text())["metrics"]["verification"]["min_sqnr_db"]
        assert abs(verified - score) < 0.01, (method, verified, score)
