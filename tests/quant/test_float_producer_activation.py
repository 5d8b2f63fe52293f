"""A Relu that int8 folds into its Conv's output Q follows the Conv into float when the Conv goes float
(``tflite``, where Relu is an int8 kernel of its own): the Q then sits after the clamp, as in int8, not
on the Conv's pre-activation output — which costs accuracy where keeping the Conv float should gain it."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dsqc.backends.registry import get_backend
from dsqc.calibration.data import SampleSet
from dsqc.ir import Model
from dsqc.quant.planner import place
from dsqc.quant.quantize import quantize_model
from dsqc.quant.recipe import parse_recipe
from dsqc.quant.spec import Precision


def conv_relu_conv() -> onnx.ModelProto:
    """x → stem Conv (with a negative bias: half its output below 0) → Relu → Conv → y."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (8, 3, 3, 3)).astype(np.float32), "w0"),
             numpy_helper.from_array(np.full(8, -0.5, np.float32), "b0"),
             numpy_helper.from_array(rng.normal(0, 0.3, (4, 8, 1, 1)).astype(np.float32), "w1")]
    nodes = [helper.make_node("Conv", ["x", "w0", "b0"], ["c"], name="stem", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w1"], ["y"], name="head")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    model = helper.make_model(helper.make_graph(nodes, "crc", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _sqnr(fp32: onnx.ModelProto, quant: onnx.ModelProto, x: np.ndarray) -> float:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    ref, got = (ort.InferenceSession(m.SerializeToString(), options, providers=["CPUExecutionProvider"])
                .run(None, {"x": x})[0] for m in (fp32, quant))
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


def test_relu_follows_a_float_conv_and_the_q_stays_after_the_clamp() -> None:
    model, profile = conv_relu_conv(), get_backend("tflite").profile
    stem_fp32 = parse_recipe({"override": [{"nodes": "stem", "precision": "fp32"}]})
    placement = place(Model.from_proto(model), profile, stem_fp32)
    assert placement.decisions["relu"].precision is Precision.FP32
    assert "follows stem into float" in placement.decisions["relu"].reason
    assert "r" in placement.activations and "c" not in placement.activations

    x = np.random.default_rng(1).normal(size=(32, 3, 8, 8)).astype(np.float32)
    samples = SampleSet({"x": x}, "test")
    followed = quantize_model(model, profile, stem_fp32, samples)
    pinned = parse_recipe({"override": [{"nodes": "stem", "precision": "fp32"},
                                        {"nodes": "relu", "precision": "int8"}]})
    separate = quantize_model(model, profile, pinned, samples)  # a user's pin is kept: the old plan
    assert "c" in separate.plan.tensors and "c" not in followed.plan.tensors
    all_int8 = quantize_model(model, profile, parse_recipe({}), samples)
    assert _sqnr(model, followed.model, x) > _sqnr(model, separate.model, x)
    assert _sqnr(model, followed.model, x) > _sqnr(model, all_int8.model, x)  # float stem gains now


def test_an_int8_producer_still_folds_its_relu() -> None:
    placement = place(Model.from_proto(conv_relu_conv()), get_backend("tflite").profile, parse_recipe({}))
    assert placement.decisions["relu"].precision is Precision.INT8
    assert placement.folded["relu"] == "stem" and "c" not in placement.activations
