"""Models exported by ``torch.onnx.export`` without ``dynamic_axes`` fix their batch size: calibration,
verification and the targets' own checks run at that size on their own (issue 12, item 1)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from dsqc.driver.cli import main

torch = pytest.importorskip("torch")


class _Cnn(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c1 = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.c2 = torch.nn.Conv2d(4, 8, 3, stride=2, padding=1)
        self.fc = torch.nn.Linear(8 * 14 * 14, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.c2(torch.relu(self.c1(x))))
        return self.fc(torch.flatten(x, 1))


def export_static(path: Path, batch: int) -> Path:
    """The everyday export: no ``dynamic_axes``, so axis 0 is pinned to the example's batch."""
    torch.manual_seed(0)
    torch.onnx.export(_Cnn().eval(), torch.randn(batch, 1, 28, 28), str(path), dynamo=False, opset_version=17)
    return path


def _build(model: Path, out: Path, target: str, *extra: str) -> int:
    return main(["build", str(model), "--target", target, "--calib", "mnist", "--calib-samples", "32",
                 "--eval-samples", "16", "--no-latency", "-o", str(out), *extra])


@pytest.mark.parametrize("batch", [1, 4])
def test_static_batch_builds_with_default_calib_batch(tmp_path: Path, batch: int) -> None:
    model = export_static(tmp_path / f"static{batch}.onnx", batch)
    assert _build(model, tmp_path / "out", "onnx") == 0  # default --calib-batch 8 ≠ the model's batch
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    ver = report["metrics"]["verification"]
    assert ver["samples"] == 16
    assert ver["min_sqnr_db"] > 25


def test_static_batch_4_tflite_runs_litert_at_batch_4(tmp_path: Path) -> None:
    model = export_static(tmp_path / "static4.onnx", 4)
    assert _build(model, tmp_path / "out", "tflite") == 0
    tfl = json.loads((tmp_path / "out" / "report.json").read_text())["metrics"]["tflite"]["verification"]
    assert tfl["samples"] == 16 and tfl["min_sqnr_db"] > 25


def test_static_batch_1_hls(tmp_path: Path) -> None:
    model = export_static(tmp_path / "static1.onnx", 1)
    assert _build(model, tmp_path / "out", "hls", "-B", "csim=false") == 0
    assert (tmp_path / "out" / "hls" / "tb" / "testbench.c").exists()


def test_fewer_samples_than_the_fixed_batch_is_one_line(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    model = export_static(tmp_path / "static4.onnx", 4)
    eval_npz = tmp_path / "eval.npz"
    np.savez(eval_npz, **{"input.1": np.zeros((3, 1, 28, 28), np.float32)})
    code = _build(model, tmp_path / "out", "onnx", "--eval-data", str(eval_npz))
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and "fixed to 4" in err[0] and "3 sample(s)" in err[0], err
    assert not (tmp_path / "out").exists()


def test_symbolic_batch_pinned_to_one_inside_builds_and_verifies(tmp_path: Path) -> None:
    """x[N,4] (symbolic) → Reshape to the constant [1, 4] → MatMul: only batch 1 runs, though the input
    says N. Calibration and verification both fall back to one sample at a time on their own."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(np.array([1, 4], np.int64), "shape"),
             numpy_helper.from_array(rng.normal(size=(4, 3)).astype(np.float32), "w")]
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"], name="pin"),
             helper.make_node("MatMul", ["r", "w"], ["y"], name="mm")]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])], inits)
    model = tmp_path / "pinned.onnx"
    import onnx

    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    data = tmp_path / "x.npz"
    np.savez(data, x=rng.normal(size=(40, 4)).astype(np.float32))
    out = tmp_path / "out"
    assert main(["build", str(model), "--target", "onnx", "--calib", str(data), "--no-latency",
                 "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    verification = report["metrics"]["verification"]
    assert verification["samples"] == 8 and verification["min_sqnr_db"] > 30
