"""Nodes that compute only integer tensors (a dynamic-batch export's Shape arithmetic) are neither int8 nor
float: the plan counts them as ``integer`` and the report does not list them among the float nodes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.build_folder import plan_from_dict
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build


def flatten_by_shape(path: Path) -> Path:
    """x[N,2,4,4] → Conv → Reshape to (Shape(x)[0], -1) → MatMul → y: the batch read at run time."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (3, 2, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.2, (48, 5)).astype(np.float32), "m"),
             numpy_helper.from_array(np.array([0], np.int64), "zero"),
             numpy_helper.from_array(np.array([-1], np.int64), "minus_one")]
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Shape", ["c"], ["s"], name="shape"),
             helper.make_node("Gather", ["s", "zero"], ["n"], name="batch", axis=0),
             helper.make_node("Concat", ["n", "minus_one"], ["target"], name="target", axis=0),
             helper.make_node("Reshape", ["c", "target"], ["flat"], name="flatten"),
             helper.make_node("MatMul", ["flat", "m"], ["y"], name="head")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 2, 4, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5])
    graph = helper.make_graph(nodes, "flat", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def test_shape_arithmetic_is_counted_apart_from_float_nodes(tmp_path: Path) -> None:
    model = flatten_by_shape(tmp_path / "flat.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).normal(size=(16, 2, 4, 4)).astype(np.float32))
    result = build(BuildRequest(model=model, target="onnx", out_dir=tmp_path / "out",
                                calib=str(tmp_path / "calib.npz"), measure_latency=False))
    assert result.plan is not None
    assert result.plan.histogram()["integer"] == 3  # Shape, Gather, Concat of the target shape
    assert {"shape", "batch", "target"}.isdisjoint(result.metrics["float_nodes"])
    assert result.plan.nodes["conv"].precision.value == "int8"
    again = plan_from_dict(result.plan.to_dict(), tmp_path / "report.json")
    assert again.nodes["shape"].integer_only and not again.nodes["conv"].integer_only
