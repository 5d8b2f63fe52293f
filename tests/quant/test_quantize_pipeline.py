"""int8 builds end to end: plan, Q/DQ placement, accuracy on real MNIST digits, gates, bad data."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.errors import GateError
from dsqc.models.mnist import DEMO_META_PATH, DEMO_MODEL_PATH
from dsqc.verify import run_batches, session


def dsqc_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsqc", *args], capture_output=True, text=True,
                          timeout=300)


@pytest.fixture(scope="module")
def mnist_build(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("mnist") / "out"
    build(BuildRequest(model=DEMO_MODEL_PATH, target="onnx", out_dir=out, calib="mnist",
                       calib_samples=256, eval_samples=1000, measure_latency=False))
    return out, json.loads((out / "report.json").read_text())


def test_mnist_int8_accuracy_within_0_3_points(mnist_build: tuple[Path, dict]) -> None:
    _, report = mnist_build
    task = report["metrics"]["verification"]["task"]
    recorded = json.loads(DEMO_META_PATH.read_text())["fp32_test_accuracy"]
    assert task["fp32"] == pytest.approx(recorded, abs=1e-9)
    assert task["drop"] <= 0.003, task
    assert report["metrics"]["verification"]["min_sqnr_db"] > 25


def test_qdq_placement_follows_ort_fusion_rules(mnist_build: tuple[Path, dict]) -> None:
    out, report = mnist_build
    model = onnx.load(out / "mnist_cnn.int8.onnx")
    ops = [n.op_type for n in model.graph.node]
    assert "Relu" not in ops, "Relu after Conv/Gemm must fold into the output Q clamp"
    consumers: dict[str, list[str]] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node.op_type)
    for node in model.graph.node:
        if node.op_type == "DequantizeLinear":
            assert len(consumers.get(node.output[0], [])) <= 1, "each DQ feeds one reader"
        if node.op_type == "Conv":
            assert consumers[node.output[0]] == ["QuantizeLinear"], "Conv needs an output Q to fuse"
    weights = {i.name: i for i in model.graph.initializer}
    assert all(weights[n.input[0]].data_type == onnx.TensorProto.INT8
               for n in model.graph.node if n.op_type == "DequantizeLinear" and n.input[0].endswith(
                   "weight_quantized"))
    reasons = {v["reason"] for v in report["plan"]["nodes"].values()}
    assert any("fused int8 kernel" in r for r in reasons)


def test_bias_is_int32_with_product_scale(mnist_build: tuple[Path, dict]) -> None:
    _, report = mnist_build
    tensors = report["plan"]["tensors"]
    biases = [name for name, spec in tensors.items() if spec["dtype"] == "int32"]
    assert biases
    for name in biases:
        weight = tensors[name.replace("bias", "weight")]
        scale = np.asarray(tensors[name]["scale"], np.float32)
        assert scale.shape == np.asarray(weight["scale"]).shape


def test_scales_do_not_depend_on_batch_size(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path) -> None:
    plans = []
    for batch in (1, 8):
        out = tmp_path / f"b{batch}"
        result = build(BuildRequest(model=conv_bn_path, target="onnx", out_dir=out, calib=str(conv_bn_npz),
                                    calib_batch=batch, measure_latency=False))
        assert result.plan is not None
        plans.append(result.plan)
    for name, spec in plans[0].tensors.items():
        np.testing.assert_allclose(spec.scale, plans[1].tensors[name].scale, rtol=1e-6)


def test_gate_failure_leaves_nothing(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path) -> None:
    out = tmp_path / "gated"
    with pytest.raises(GateError, match="--min-sqnr"):
        build(BuildRequest(model=conv_bn_path, target="onnx", out_dir=out, calib=str(conv_bn_npz),
                           min_sqnr=200.0, measure_latency=False))
    assert not out.exists()


def test_quantized_model_runs_and_tracks_fp32(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path) -> None:
    out = tmp_path / "q"
    build(BuildRequest(model=conv_bn_path, target="onnx", out_dir=out, calib=str(conv_bn_npz),
                       method="minmax", measure_latency=False))
    x = np.load(conv_bn_npz)["input"][:8]
    ref = run_batches(session(onnx.load(conv_bn_path)), [{"input": x}])["logits"]
    got = run_batches(session(onnx.load(out / "conv_bn.int8.onnx")), [{"input": x}])["logits"]
    assert np.corrcoef(ref.ravel(), got.ravel())[0, 1] > 0.99


@pytest.mark.parametrize(("make", "needle"), [
    (lambda x: {"images": x}, "input"),
    (lambda x: {"input": x[:, :2]}, "input"),
    (lambda x: {"input": x.astype(np.int32)}, "input"),
    (lambda x: {"input": np.where(np.arange(x.shape[0])[:, None, None, None] == 3, np.nan, x)}, "NaN"),
    (lambda x: {"input": x[:0]}, "no samples"),
])
def test_bad_calibration_data_exit_2(tmp_path: Path, conv_bn_path: Path, make, needle: str) -> None:
    x = np.random.default_rng(0).normal(size=(20, 3, 16, 16)).astype(np.float32)
    npz = tmp_path / "bad.npz"
    np.savez(npz, **make(x))
    out = tmp_path / "out"
    proc = dsqc_cli("build", str(conv_bn_path), "--target", "onnx", "--calib", str(npz), "-o", str(out))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(lines) == 1 and needle in lines[0], proc.stderr
    assert not out.exists()


def test_bad_recipe_exit_2(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text("[quantization]\nmethod = 'magic'\n")
    proc = dsqc_cli("build", str(conv_bn_path), "--target", "onnx", "--calib", str(conv_bn_npz),
                    "--recipe", str(recipe), "-o", str(tmp_path / "out"))
    assert proc.returncode == 2 and "quantization.method = 'magic'" in proc.stderr, proc.stderr


def test_random_calibration_warns_loudly(tmp_path: Path, conv_bn_path: Path) -> None:
    proc = dsqc_cli("build", str(conv_bn_path), "--target", "onnx", "--calib", "random", "--no-latency",
                    "-o", str(tmp_path / "out"))
    assert proc.returncode == 0, proc.stderr
    assert "RANDOM DATA" in proc.stderr
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert any("RANDOM DATA" in w for w in report["warnings"])
