"""``dsqc debug`` ranks a layer's weight and its bias together: bias correction fits the bias to the
weight's rounding, so the weight alone overstates the error (and the bias alone shows the opposite one)
while both together — what the build ships — are nearly exact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.cli import main

CHANNELS = 8


def depthwise_edge_filter() -> onnx.ModelProto:
    """x[N, 8, 8, 8] → depthwise 3×3 Conv (no padding) → y. Each filter sums to zero (an edge
    detector) and x sits at 20 ± 0.3: the output is the small variation, while the weight's rounding
    error times the large mean is a per-channel offset — exactly what bias correction removes."""
    rng = np.random.default_rng(0)
    w = rng.normal(0, 0.5, (CHANNELS, 1, 3, 3)).astype(np.float32)
    w -= w.mean(axis=(1, 2, 3), keepdims=True)
    b = rng.normal(0, 0.1, CHANNELS).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w", "b"], ["y"], name="dw", group=CHANNELS)], "depthwise",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", CHANNELS, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", CHANNELS, 6, 6])],
        [numpy_helper.from_array(w, "w"), numpy_helper.from_array(b, "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("joint")
    onnx.save(depthwise_edge_filter(), root / "dw.onnx")
    x = 20 + 0.3 * np.random.default_rng(1).normal(0, 1, (48, CHANNELS, 8, 8))
    np.savez(root / "calib.npz", x=x.astype(np.float32))
    (root / "no_bc.toml").write_text("[boosters]\nbias_correction = false\n")
    return {"root": root, "model": root / "dw.onnx", "calib": root / "calib.npz"}


def _debug(case: dict[str, Path], name: str, capsys: pytest.CaptureFixture[str],
           *recipe: str) -> tuple[dict[str, dict], str]:
    out = case["root"] / name
    assert main(["build", str(case["model"]), "--target", "onnx", "--calib", str(case["calib"]),
                 "--no-latency", "-o", str(out), *recipe]) == 0
    capsys.readouterr()
    assert main(["debug", str(case["model"]), str(out), "--calib", str(case["calib"])]) == 0
    text = capsys.readouterr().out
    points = {p["tensor"]: p for p in json.loads((out / "debug.json").read_text())["points"]}
    return points, text


def test_bias_corrected_depthwise_layer_is_good_together_and_bad_alone(
        case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    points, text = _debug(case, "bc", capsys)
    joint, weight, bias = points["w + b"], points["w"], points["b"]
    assert joint["kind"] == "weight+bias" and joint["parts"] == ["w", "b"]
    assert weight["part_of"] == bias["part_of"] == "w + b" and joint["part_of"] is None
    assert weight["rank"] == bias["rank"] == joint["rank"]
    assert weight["local_output_sqnr_db"] < 20  # the weight alone: its rounding times the mean of x
    assert joint["local_output_sqnr_db"] > weight["local_output_sqnr_db"] + 20  # corrected together
    # the corrected bias alone carries the opposite error, about as large
    assert abs(bias["local_output_sqnr_db"] - weight["local_output_sqnr_db"]) < 3
    assert joint["local_tensor_sqnr_db"] is None and joint["accumulated_tensor_sqnr_db"] is None
    # ranked among the other rows by the joint value, not by its worst part
    ranks = sorted((p for p in points.values() if p["part_of"] is None), key=lambda p: p["rank"])
    assert [p["rank"] for p in ranks] == list(range(1, len(ranks) + 1))
    assert ranks[-1]["tensor"] == "w + b"
    table = text.split("weights and biases:")[1].splitlines()
    assert "1 layer: weight + bias together" in table[0]
    assert "w + b" in table[2] and "↳ weight alone" in table[3] and "↳ bias alone" in table[4]
    assert "dsqc: 4 quantized tensors" in text  # x, y, w, b: the joint row is no tensor


def test_without_bias_correction_the_weight_alone_is_the_layer(
        case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    points, _ = _debug(case, "no_bc", capsys, "--recipe", str(case["root"] / "no_bc.toml"))
    joint, weight, bias = points["w + b"], points["w"], points["b"]
    assert abs(joint["local_output_sqnr_db"] - weight["local_output_sqnr_db"]) < 0.5
    assert joint["local_output_sqnr_db"] < 20 and bias["local_output_sqnr_db"] > 60  # int32 rounding only
