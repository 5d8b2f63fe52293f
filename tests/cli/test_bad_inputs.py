"""Every bad input: one line on stderr naming the culprit, exit code 2, nothing left in the output."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from tests.conftest import conv_bn_model


def run_dsqc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsqc", *args], capture_output=True, text=True,
                          timeout=300)


def assert_clean_failure(proc: subprocess.CompletedProcess[str], out: Path, *needles: str) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 2, proc.stderr
    assert len(lines) == 1 and lines[0].startswith("dsqc: error: "), proc.stderr
    assert "Traceback" not in proc.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]
    assert not out.exists(), f"{out} was left behind"
    assert not list(out.parent.glob(f".{out.name}.dsqc-*")), "staging folder left behind"
    return lines[0]


def build(model: Path, out: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_dsqc("build", str(model), "--target", "onnx", "--precision", "fp32", "-o", str(out), *extra)


def test_truncated_file(tmp_path: Path) -> None:
    data = conv_bn_model().SerializeToString()
    path = tmp_path / "trunc.onnx"
    path.write_bytes(data[: len(data) // 2])
    assert_clean_failure(build(path, tmp_path / "out"), tmp_path / "out", "trunc.onnx")


def test_not_onnx(tmp_path: Path) -> None:
    path = tmp_path / "notes.onnx"
    path.write_text("this is a text file, not a model\n" * 20)
    assert_clean_failure(build(path, tmp_path / "out"), tmp_path / "out", "notes.onnx", "not an ONNX model")


def test_unknown_domain(tmp_path: Path) -> None:
    model = conv_bn_model()
    model.graph.node[2].domain = "com.acme"
    model.opset_import.append(helper.make_opsetid("com.acme", 1))
    path = tmp_path / "custom.onnx"
    onnx.save(model, path)
    assert_clean_failure(build(path, tmp_path / "out"), tmp_path / "out", "'relu'", "com.acme")


def test_missing_initializer(tmp_path: Path) -> None:
    model = conv_bn_model()
    del model.graph.initializer[0]  # "w"
    path = tmp_path / "missing.onnx"
    onnx.save(model, path)
    assert_clean_failure(build(path, tmp_path / "out"), tmp_path / "out", "'conv'", "'w'")


def test_cycle(tmp_path: Path) -> None:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add_a"),
             helper.make_node("Relu", ["a"], ["b"], name="relu_b"),
             helper.make_node("Identity", ["a"], ["y"], name="out")]
    model = helper.make_model(helper.make_graph(nodes, "cyclic", [x], [y]),
                              opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "cycle.onnx"
    onnx.save(model, path)
    assert_clean_failure(build(path, tmp_path / "out"), tmp_path / "out", "cycle", "add_a", "relu_b")


def test_external_data_escaping_folder(tmp_path: Path) -> None:
    model = conv_bn_model()
    tensor = model.graph.initializer[6]  # fc_w
    secret = tmp_path / "secret.bin"
    secret.write_bytes(numpy_helper.to_array(tensor).tobytes())
    tensor.ClearField("raw_data")
    tensor.ClearField("float_data")
    tensor.data_location = TensorProto.EXTERNAL
    size = str(secret.stat().st_size)
    for key, value in (("location", "../secret.bin"), ("offset", "0"), ("length", size)):
        tensor.external_data.add(key=key, value=value)
    (tmp_path / "models").mkdir()
    path = tmp_path / "models" / "escape.onnx"
    onnx.save(model, path)
    proc = build(path, tmp_path / "out")
    assert_clean_failure(proc, tmp_path / "out", "fc_w", "outside the model's folder")


def test_unwritable_output(tmp_path: Path, conv_bn_path: Path) -> None:
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    out = blocker / "out"
    proc = build(conv_bn_path, out)
    assert proc.returncode == 2 and "cannot write output folder" in proc.stderr, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert blocker.read_text() == "x"


def test_output_is_a_file(tmp_path: Path, conv_bn_path: Path) -> None:
    out = tmp_path / "taken"
    out.write_text("keep me")
    proc = build(conv_bn_path, out)
    assert proc.returncode == 2 and "not a folder" in proc.stderr
    assert out.read_text() == "keep me"


def test_unknown_target(tmp_path: Path, conv_bn_path: Path) -> None:
    proc = run_dsqc("build", str(conv_bn_path), "--target", "npu", "-o", str(tmp_path / "out"))
    assert_clean_failure(proc, tmp_path / "out", "unknown target 'npu'", "onnx")


def test_good_build_writes_everything(tmp_path: Path, conv_bn_path: Path) -> None:
    out = tmp_path / "out"
    proc = build(conv_bn_path, out)
    assert proc.returncode == 0, proc.stderr
    assert sorted(p.name for p in out.iterdir()) == ["build_info.json", "conv_bn.fp32.onnx", "manifest.json",
                                                     "report.html", "report.json"]
    normalized = onnx.load(out / "conv_bn.fp32.onnx")
    assert "BatchNormalization" not in {n.op_type for n in normalized.graph.node}
    assert np.isfinite(len(normalized.graph.node))
