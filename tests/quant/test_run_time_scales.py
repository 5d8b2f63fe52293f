"""The per-row run-time quantizer (``dsqc.quant.run_time_scales``): ORT runs it as LiteRT's hybrid kernels
quantize, so the canonical model of a ``tflite`` dynamic build measures what the file does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.cli import main
from dsqc.quant import run_time_scales
from dsqc.quant.dynamic import candidates, dynamic_nodes, insert_dynamic
from dsqc.quant.spec import QuantPlan


def litert_rows(x: np.ndarray, axes: tuple[int, ...]) -> np.ndarray:
    """TFLite's ``AsymmetricQuantizeFloats`` over ``axes`` (its C++ in numpy, float64), dequantized."""
    lo = np.minimum(x.min(axis=axes, keepdims=True), 0.0).astype(np.float64)
    hi = np.maximum(x.max(axis=axes, keepdims=True), 0.0).astype(np.float64)
    flat = hi == lo
    scale = np.where(flat, 1.0, (hi - lo) / 255.0)
    zp = np.clip(np.round(-128.0 - lo / scale), -128, 127)
    q = np.clip(np.round(zp + x / scale), -128, 127)
    return np.where(flat, 0.0, (q - zp) * scale)


def _quantizer_model(op: str, shape: list[int], opset: int) -> onnx.ModelProto:
    graph = helper.make_graph([run_time_scales.quantizer_node(op, "x", "y", "q")], "q",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    run_time_scales.add_functions(model)
    onnx.checker.check_model(model, full_check=True)
    return model


def test_rows_and_images_are_quantized_as_litert_does() -> None:
    rng = np.random.default_rng(0)
    rows = rng.standard_normal((2, 6, 40)).astype(np.float32) * np.float32(10.0) ** rng.uniform(
        -3, 2, size=(2, 6, 1)).astype(np.float32)
    rows[0, 1] = np.abs(rows[0, 1])  # all positive: the range still includes 0
    rows[0, 2] = -np.abs(rows[0, 2])
    rows[1, 0] = 0.0  # a silent row: quantized to zeros, not NaN
    rows[1, 1] = 3.0  # a constant row
    images = rng.standard_normal((3, 4, 5, 5)).astype(np.float32) * np.array(
        [0.01, 1.0, 50.0], np.float32).reshape(3, 1, 1, 1)
    for opset in (13, 17, 18, 21):  # ReduceMin/Max take axes as an input from opset 18
        for op, x, axes in ((run_time_scales.ROWS, rows, (-1,)), (run_time_scales.IMAGES, images, (1, 2, 3))):
            model = _quantizer_model(op, list(x.shape), opset)
            got = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(
                None, {"x": x})[0]
            want = litert_rows(x, axes)
            lo, hi = x.min(axis=axes, keepdims=True), x.max(axis=axes, keepdims=True)
            step = (np.maximum(hi, 0) - np.minimum(lo, 0)) / 255.0
            assert np.all(np.abs(got - want) <= 1e-4 * step + 1e-30), (op, opset)  # float32 scale
            assert np.all(np.abs(got - x) <= 0.5001 * step + 1e-30), (op, opset)  # half a step per row
    one_scale = (images.max() - images.min()) / 255.0  # what one scale for the whole batch would step by
    assert np.abs(got[0] - images[0]).max() < one_scale / 1000  # the quiet image keeps its own fine grid


def _token_mlp(path: Path) -> Path:
    """[1, 16, 32] tokens → MatMul + bias → Relu → MatMul: a transformer's FFN, loud and quiet tokens."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array((rng.standard_normal((32, 48)) * 0.2).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.standard_normal(48).astype(np.float32) * 0.1, "b1"),
             numpy_helper.from_array((rng.standard_normal((48, 8)) * 0.2).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m"], name="fc1"),
             helper.make_node("Add", ["m", "b1"], ["h"], name="fc1_bias"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "tokens",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16, 32])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 16, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _loud_and_quiet_tokens(n: int, seed: int) -> np.ndarray:
    """``n`` samples of 16 tokens, each token 100x quieter to 10x louder than unit scale."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((n, 16, 32)) * 10.0 ** rng.uniform(-2, 1, size=(n, 16, 1))).astype(np.float32)


def test_tflite_dynamic_reference_is_the_file(tmp_path: Path) -> None:
    """ORT's run of the canonical model and LiteRT's run of the ``.tflite`` agree to float rounding, where a
    per-tensor reference would read the quiet tokens' error many dB worse than the file has it."""
    model = _token_mlp(tmp_path / "tokens.onnx")
    x = _loud_and_quiet_tokens(8, 2)
    np.savez(tmp_path / "eval.npz", x=x)
    out = tmp_path / "out"
    assert main(["build", str(model), "--target", "tflite", "--mode", "dynamic", "--no-latency",
                 "--eval-data", str(tmp_path / "eval.npz"), "-o", str(out)]) == 0
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    ours = metrics["verification"]["outputs"]["y"]["sqnr_db"]
    litert = metrics["tflite"]["verification"]["outputs"]["y"]["sqnr_db"]
    assert abs(ours - litert) < 0.01 and metrics["tflite"]["verification"]["vs_qdq"]["y"]["sqnr_db"] > 100
    fp32 = onnx.load(model)
    sess = ort.InferenceSession(fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    per_tensor = insert_dynamic(fp32, candidates(fp32), QuantPlan(), activation_scale="tensor")
    coarse = ort.InferenceSession(per_tensor.SerializeToString(), providers=["CPUExecutionProvider"])
    ref = np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    got = np.concatenate([coarse.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)) < litert - 3  # what it replaced


def test_row_canonical_model_is_recognised_and_valid(tmp_path: Path) -> None:
    fp32 = onnx.load(_token_mlp(tmp_path / "tokens.onnx"))
    canonical = insert_dynamic(fp32, candidates(fp32), QuantPlan(), activation_scale="row")
    onnx.checker.check_model(canonical, full_check=True)
    assert set(dynamic_nodes(canonical)) == {"fc1", "fc2"}
    quantizers = [n for n in canonical.graph.node if run_time_scales.is_quantizer(n)]
    assert [n.op_type for n in quantizers] == [run_time_scales.ROWS] * 2
    functions = [(f.domain, f.name) for f in canonical.functions]
    assert functions == [(run_time_scales.DOMAIN, run_time_scales.ROWS)]
