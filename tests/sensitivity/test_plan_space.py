"""``PlanSpace.planned``: a plan the search measures can quantize a tensor the INT8 plan folds away."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.autoprec.plan_space import build_space
from dsqc.backends.tflite.profile import TFLITE_PROFILE
from dsqc.calibration.data import SampleSet
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import Precision


def _residual() -> onnx.ModelProto:
    """x → conv1 → relu1 → conv2 → add(·, relu1) → relu2 → conv3 → y: RegNetY's block end in small."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (4, 4, 3, 3)).astype(np.float32), f"w{i}")
             for i in (1, 2, 3)]
    inits += [numpy_helper.from_array(rng.normal(0, 0.1, 4).astype(np.float32), f"b{i}") for i in (1, 2, 3)]
    conv = {"pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], "conv1", **conv),
             helper.make_node("Relu", ["c1"], ["r1"], "relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], "conv2", **conv),
             helper.make_node("Add", ["c2", "r1"], ["sum"], "add"),
             helper.make_node("Relu", ["sum"], ["r2"], "relu2"),
             helper.make_node("Conv", ["r2", "w3", "b3"], ["y"], "conv3", **conv)]
    graph = helper.make_graph(nodes, "residual", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                                ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def test_a_float_add_exposes_the_sum_its_relu_was_folded_into() -> None:
    """On ``tflite`` the INT8 plan folds relu2 into the Add, so the sum is never calibrated. A searched
    plan taking the Add float leaves relu2 to quantize the sum (RegNetY-400MF's repair stopped with
    ``KeyError: plan space: no calibration for […/Add_output_0]``): the space calibrates it then."""
    samples = SampleSet({"x": np.random.default_rng(1).normal(size=(16, 4, 8, 8)).astype(np.float32)}, "n")
    space = build_space(_residual(), TFLITE_PROFILE, Recipe(method="minmax"), samples, int4=False)
    assert "sum" not in space.stats and "add" in space.choices
    assert space.plan8.folded_activations.get("relu2") == "add"
    assignment = {name: Precision.INT8 for name in space.choices} | {"add": Precision.FP32}
    plan = space.planned(assignment)
    assert "sum" in plan.tensors and plan.precision_of("add") is Precision.FP32
    lo, hi = space.stats["sum"].lo, space.stats["sum"].hi
    assert lo < 0 < hi  # the sum before relu2, as calibrated on the samples
