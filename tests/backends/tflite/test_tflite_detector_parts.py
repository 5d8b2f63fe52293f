"""YOLO-head and encoder-mask idioms: Split, Shape-driven Reshape under a dynamic batch, the boxes +
sigmoid-scores Concat, and the Cast/Where additive attention mask — lowered, run in LiteRT (child
process) and compared with ONNX Runtime."""

from __future__ import annotations

import numpy as np
import onnx
from _models import samples
from _qdq import normalize, ort_run, qdq_model, run_tflite_isolated
from onnx import TensorProto, helper, numpy_helper

from dsqc.backends.tflite.lower import lower
from dsqc.backends.tflite.validate import validate
from dsqc.backends.tflite.writer import serialize
from dsqc.quant.spec import Precision


def _head() -> onnx.ModelProto:
    """Conv → Split(4 box, 4 class) → boxes × stride, Sigmoid(classes) → Reshape via Shape → Concat."""
    rng = np.random.default_rng(0)
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.5, "w")
    stride = numpy_helper.from_array(np.asarray(8.0, np.float32), "stride")
    tail = numpy_helper.from_array(np.asarray([4, -1], np.int64), "tail")
    index = numpy_helper.from_array(np.asarray([0], np.int64), "index")
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Split", ["c"], ["box", "cls"], axis=1, num_outputs=2),
        helper.make_node("Shape", ["c"], ["shape"]),
        helper.make_node("Gather", ["shape", "index"], ["batch"], axis=0),
        helper.make_node("Concat", ["batch", "tail"], ["flat_shape"], axis=0),
        helper.make_node("Mul", ["box", "stride"], ["pixels"]),
        helper.make_node("Reshape", ["pixels", "flat_shape"], ["boxes"]),
        helper.make_node("Sigmoid", ["cls"], ["scores_map"]),
        helper.make_node("Reshape", ["scores_map", "flat_shape"], ["scores"]),
        helper.make_node("Concat", ["boxes", "scores"], ["y"], axis=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 8, 36])
    graph = helper.make_graph(nodes, "head", [x], [y], [w, stride, tail, index])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def _mask() -> onnx.ModelProto:
    """scores + Where(Cast(attention_mask), 0, float min) → Softmax, the exported-encoder idiom."""
    zero = numpy_helper.from_array(np.asarray(0.0, np.float32), "zero")
    low = numpy_helper.from_array(np.asarray(np.finfo(np.float32).min, np.float32), "low")
    w = numpy_helper.from_array(np.random.default_rng(1).standard_normal((8, 8)).astype(np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["s"]),
        helper.make_node("Cast", ["attention_mask"], ["keep"], to=TensorProto.BOOL),
        helper.make_node("Where", ["keep", "zero", "low"], ["additive"]),
        helper.make_node("Add", ["s", "additive"], ["masked"]),
        helper.make_node("Softmax", ["masked"], ["p"], axis=-1),
        helper.make_node("MatMul", ["p", "w"], ["y"]),
    ]
    inputs = [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8]),
              helper.make_tensor_value_info("attention_mask", TensorProto.INT64, [1, 8])]
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph(nodes, "mask", inputs, [y], [zero, low, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def _blob(model: onnx.ModelProto) -> tuple[bytes, object]:
    graph, stats = lower(model)
    blob = serialize(graph, True, [i.name for i in model.graph.input], [o.name for o in model.graph.output])
    validate(blob)
    return blob, stats


def test_yolo_head_fp32_matches_onnx() -> None:
    fp32 = normalize(_head())
    blob, _ = _blob(fp32)
    x = samples(fp32, 1, seed=3, batch=1)[0]["x"]
    got = run_tflite_isolated(blob, [[x]])[0][0]
    assert np.max(np.abs(got - ort_run(fp32, {"x": x})[0])) <= 1e-4


def test_yolo_head_int8_keeps_the_mixed_concat_float() -> None:
    fp32 = normalize(_head())
    qdq, plan = qdq_model(fp32, samples(fp32, 8, batch=2))
    concat = next(n.name for n in fp32.graph.node if n.op_type == "Concat" and n.output[0] == "y")
    assert plan.nodes[concat].precision is Precision.FP32 and "Sigmoid" in plan.nodes[concat].reason
    blob, stats = _blob(qdq)
    assert concat in stats.float_reasons  # type: ignore[attr-defined]
    x = samples(fp32, 1, seed=4, batch=1)[0]["x"]
    got = run_tflite_isolated(blob, [[x]])[0][0]
    ref, want = ort_run(qdq, {"x": x})[0], ort_run(fp32, {"x": x})[0]
    assert np.max(np.abs(got[:, 4:] - ref[:, 4:])) <= 2 / 256  # scores: ≤ 2 LSB of the fixed 1/256 scale
    assert np.max(np.abs(got[:, 4:] - want[:, 4:])) < 0.05  # and not collapsed onto the boxes' scale


def test_attention_mask_lowers_and_stays_float() -> None:
    fp32 = normalize(_mask())
    feeds = {"x": np.random.default_rng(2).standard_normal((1, 8)).astype(np.float32),
             "attention_mask": np.asarray([[1, 1, 1, 1, 1, 0, 0, 0]], np.int64)}
    blob, _ = _blob(fp32)
    got = run_tflite_isolated(blob, [[feeds["x"], feeds["attention_mask"]]])[0][0]
    assert np.max(np.abs(got - ort_run(fp32, feeds)[0])) <= 1e-4
    calib = [{"x": f["x"][:1], "attention_mask": feeds["attention_mask"]} for f in samples(fp32, 4, batch=1)]
    qdq, plan = qdq_model(fp32, calib)
    add, softmax = (next(n.name for n in fp32.graph.node if n.op_type == op) for op in ("Add", "Softmax"))
    assert plan.nodes[add].precision is Precision.FP32 and plan.nodes[softmax].precision is Precision.FP32
    blob8, _ = _blob(qdq)
    got8 = run_tflite_isolated(blob8, [[feeds["x"], feeds["attention_mask"]]])[0][0]
    ref = ort_run(qdq, feeds)[0]
    assert np.max(np.abs(got8 - ref)) <= 0.02 * np.max(np.abs(ref))  # int8 .tflite ≈ the QDQ model
