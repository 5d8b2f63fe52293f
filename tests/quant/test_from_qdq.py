"""``dsqc build`` of an already-quantized QDQ model: the FP32 model under it and its scales kept."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.cli import main
from dsqc.quant.from_qdq import QdqInputError, split_qdq


def _build(model: Path, target: str, calib: Path, out: Path, *extra: str) -> int:
    return main(["build", str(model), "--target", target, "--calib", str(calib), "--no-latency", "-q",
                 "-o", str(out), *extra])


def test_a_dsqc_qdq_model_rebuilds_with_its_own_scales(conv_bn_path: Path, conv_bn_npz: Path,
                                                       tmp_path: Path) -> None:
    assert _build(conv_bn_path, "onnx", conv_bn_npz, tmp_path / "first") == 0
    first = tmp_path / "first" / "conv_bn.int8.onnx"
    original = split_qdq(onnx.load(first))
    # a different calibration set: the kept tensors must not move with it
    rng = np.random.default_rng(7)
    other = tmp_path / "other.npz"
    np.savez(other, input=rng.normal(0, 3, (40, 3, 16, 16)).astype(np.float32))
    assert _build(first, "onnx", other, tmp_path / "second") == 0
    again = split_qdq(onnx.load(tmp_path / "second" / "conv_bn.int8.onnx"))
    assert set(again.specs) == set(original.specs)
    for name, spec in original.specs.items():
        assert np.array_equal(again.specs[name].scale, spec.scale), name
        assert np.array_equal(again.specs[name].zero_point, spec.zero_point), name
    # the FP32 model under the Q/DQ computes the original model with its weights on their grid
    feeds = {"input": rng.normal(0, 1, (4, 3, 16, 16)).astype(np.float32)}
    fp32_out = _run(original.fp32, feeds)
    qdq_out = _run(onnx.load(first), feeds)
    assert np.abs(fp32_out - qdq_out).max() < 0.05 * np.abs(fp32_out).max()
    assert _build(first, "tflite", other, tmp_path / "tflite", "--fp32-reference", str(conv_bn_path)) == 0


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _operator_style() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(s, dtype), n) for n, s, dtype in (
        ("xs", 0.1, np.float32), ("xz", 0, np.uint8), ("ws", 0.1, np.float32), ("wz", 0, np.uint8),
        ("ys", 0.1, np.float32), ("yz", 0, np.uint8))]
    inits.append(numpy_helper.from_array(np.ones((2, 1, 1, 1), np.uint8), "w"))
    names = ["x", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    node = helper.make_node("QLinearConv", names, ["y"], name="qconv")
    graph = helper.make_graph([node], "g",
                              [helper.make_tensor_value_info("x", TensorProto.UINT8, [1, 1, 4, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.UINT8, [1, 2, 4, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_operator_style_and_half_pairs_are_one_clear_error(tmp_path: Path, conv_bn_npz: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "qlinear.onnx"
    onnx.save(_operator_style(), path)
    assert _build(path, "onnx", conv_bn_npz, tmp_path / "out") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "node 'qconv' is QLinearConv" in err[0] and err[0].startswith("dsqc: error:")
    assert not (tmp_path / "out").exists()
    # a DequantizeLinear of a computed tensor without its QuantizeLinear
    dq = helper.make_node("DequantizeLinear", ["x", "s", "z"], ["y"], name="lonely_dq")
    graph = helper.make_graph([dq], "g", [helper.make_tensor_value_info("x", TensorProto.INT8, [1, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
                              [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
                               numpy_helper.from_array(np.array(0, np.int8), "z")])
    with pytest.raises(QdqInputError, match="'lonely_dq' reads 'x', which is neither a constant nor a "
                                            "QuantizeLinear output"):
        split_qdq(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
