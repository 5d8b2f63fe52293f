"""Small ONNX models for the calibration tests, built with onnx.helper."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: Sequence[str],
           inits: Sequence[onnx.TensorProto] = ()) -> onnx.ModelProto:
    outs = [helper.make_tensor_value_info(o, FLOAT, None) for o in outputs]
    graph = helper.make_graph(nodes, "g", inputs, outs, list(inits))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def conv_model(batch: int | str = "N", seed: int = 0) -> onnx.ModelProto:
    """x[batch,3,8,8] → Conv → Relu → Conv → Add(skip conv) → Relu → GAP → Flatten → y[batch,8]."""
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b1"),
        numpy_helper.from_array(rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32), "w2"),  # > 1 KiB
        numpy_helper.from_array(rng.normal(0, 0.4, (8, 3, 1, 1)).astype(np.float32), "w3"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"]),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w3"], ["skip"]),
        helper.make_node("Add", ["c2", "skip"], ["a"]),
        helper.make_node("Relu", ["a"], ["r2"]),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"]),
        helper.make_node("Flatten", ["g"], ["y"]),
        helper.make_node("Shape", ["r2"], ["shape"]),
    ]
    x = helper.make_tensor_value_info("x", FLOAT, [batch, 3, 8, 8])
    return _model(nodes, [x], ["y"], inits)


ACTIVATIONS = ["x", "c1", "r1", "c2", "skip", "a", "r2", "g", "y"]


def reshape_batch1_model() -> onnx.ModelProto:
    """x[N,4] (dynamic) → Reshape to the constant [1, 4] → Relu: only batch 1 runs."""
    shape = numpy_helper.from_array(np.array([1, 4], dtype=np.int64), "shape")
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["r"]), helper.make_node("Relu", ["r"], ["y"])]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 4])], ["y"], [shape])


def nonfinite_model() -> onnx.ModelProto:
    """x[N,4] → Relu → Log (−inf where x <= 0) → y; and Sqrt(−1 − Relu) → all NaN."""
    one = numpy_helper.from_array(np.array(-1.0, dtype=np.float32), "minus_one")
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Log", ["r"], ["y"]),
        helper.make_node("Sub", ["minus_one", "r"], ["neg"]),
        helper.make_node("Sqrt", ["neg"], ["nan"]),
    ]
    return _model(nodes, [helper.make_tensor_value_info("x", FLOAT, ["N", 4])], ["y", "nan"], [one])


def two_input_model() -> onnx.ModelProto:
    """a[N,2] + b[N,2] → y; b has an int64 partner `ids`[N] that is unused."""
    nodes = [helper.make_node("Add", ["a", "b"], ["y"])]
    inputs = [
        helper.make_tensor_value_info("a", FLOAT, ["N", 2]),
        helper.make_tensor_value_info("b", FLOAT, ["N", 2]),
        helper.make_tensor_value_info("ids", TensorProto.INT64, ["N"]),
    ]
    return _model(nodes, inputs, ["y"])
