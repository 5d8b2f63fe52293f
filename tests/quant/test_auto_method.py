"""The range method ``auto``: MSE clipping on convolution inputs, min/max elsewhere (opt-in)."""

from __future__ import annotations

import numpy as np
from onnx import TensorProto, helper, numpy_helper

from dsqc.quant.boosters import BoosterOptions
from dsqc.quant.quantize import tensor_methods
from dsqc.quant.recipe import Recipe


def _conv_then_matmul() -> helper.ModelProto:
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(4, 5)).astype(np.float32), "m"),
             numpy_helper.from_array(np.array([1, 4], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Reshape", ["g", "shape"], ["f"], name="flat"),
             helper.make_node("MatMul", ["f", "m"], ["y"], name="mm"),
             helper.make_node("Softmax", ["y"], ["p"], name="softmax")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    p = helper.make_tensor_value_info("p", TensorProto.FLOAT, [1, 5])
    graph = helper.make_graph(nodes, "g", [x], [p], inits)
    return helper.make_model(graph)


def test_auto_uses_mse_on_conv_maps_and_minmax_elsewhere() -> None:
    model = _conv_then_matmul()
    methods = tensor_methods(model, ["x", "c", "r", "g", "f", "y"], "auto")
    assert methods == {"x": "minmax",  # graph input: the data's own distribution
                       "c": "minmax", "r": "minmax",  # a Conv's output read by no Conv (a head)
                       "g": "minmax", "f": "minmax", "y": "minmax"}  # pooled vector, MatMul side
    chained = tensor_methods(_conv_then_conv(), ["x", "c", "r", "y"], "auto")
    assert chained == {"x": "minmax", "c": "mse", "r": "mse", "y": "minmax"}, "Conv → Relu → Conv"


def test_explicit_methods_apply_everywhere_but_entropy_spares_inputs() -> None:
    model = _conv_then_matmul()
    assert set(tensor_methods(model, ["x", "c", "y"], "mse").values()) == {"mse"}
    assert tensor_methods(model, ["x", "c"], "entropy") == {"x": "minmax", "c": "entropy"}


def _conv_then_conv() -> helper.ModelProto:
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=(4, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(size=(2, 4, 1, 1)).astype(np.float32), "w2")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="conv2")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2, 6, 6])
    return helper.make_model(helper.make_graph(nodes, "g", [x], [y], inits))


def test_defaults_are_select_and_bias_correction() -> None:
    assert Recipe().method == "select"
    assert BoosterOptions().bias_correction and BoosterOptions.from_dict({}).bias_correction
    assert not BoosterOptions.from_dict({"bias_correction": False}).bias_correction
