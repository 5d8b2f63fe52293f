"""Range coverage: a build whose held-out data runs far past what the calibration samples spanned says so,
names the tensors, and stays quiet when both come from the same distribution."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.pipeline import build


def _conv_relu_conv(path: Path) -> Path:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.4, s).astype(np.float32), k)
             for k, s in {"w1": (8, 3, 3, 3), "w2": (4, 8, 1, 1)}.items()]
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2"], ["y"], name="conv2")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    graph = helper.make_graph(nodes, "crc", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _build(tmp: Path, held_scale: float) -> BuildResult:
    model = _conv_relu_conv(tmp / "m.onnx")
    rng = np.random.default_rng(1)
    np.savez(tmp / "calib.npz", x=rng.normal(size=(32, 3, 8, 8)).astype(np.float32))
    np.savez(tmp / "held.npz", x=(held_scale * rng.normal(size=(16, 3, 8, 8))).astype(np.float32))
    return build(BuildRequest(model=model, target="onnx", out_dir=tmp / f"out{held_scale:g}",
                              calib=str(tmp / "calib.npz"), eval_data=str(tmp / "held.npz"),
                              measure_latency=False))


def test_held_out_data_past_the_calibrated_ranges_is_named(tmp_path: Path) -> None:
    result = _build(tmp_path, held_scale=6.0)
    coverage = result.metrics["range_coverage"]
    assert coverage["tensors"] >= 2 and coverage["samples"] == 16
    past = {o["tensor"]: o for o in coverage["past_range"]}
    assert "x" in past and past["x"]["ratio"] > 4  # the input itself spans ~6x the calibration's
    assert past["x"]["calibration"][1] < past["x"]["held_out"][1]
    line = next(w for w in result.warnings if w.startswith("range coverage:"))
    assert "'x'" in line and "calibration samples do not cover" in line


def test_same_distribution_gives_no_warning(tmp_path: Path) -> None:
    result = _build(tmp_path, held_scale=1.0)
    assert result.metrics["range_coverage"]["past_range"] == []
    assert not any(w.startswith("range coverage:") for w in result.warnings)
