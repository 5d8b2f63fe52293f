"""dsqc.op_kinds: the weight axes it names are the ones ONNX Runtime computes with."""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.op_kinds import (
    COMPUTE_OPS,
    data_channel_axis,
    input_channels,
    is_matmul_bias,
    output_channels,
    weight_output_axis,
    weight_reduction_axis,
)

# (op, attributes, data input shape, weight shape, output channel axis of the result)
CASES: list[tuple[str, dict[str, Any], tuple[int, ...], tuple[int, ...], int]] = [
    ("Conv", {}, (1, 3, 5, 5), (4, 3, 3, 3), 1),
    ("Conv", {"group": 2}, (1, 4, 5, 5), (6, 2, 3, 3), 1),
    ("ConvTranspose", {}, (1, 3, 4, 4), (3, 5, 3, 3), 1),
    ("ConvTranspose", {"group": 3}, (1, 6, 4, 4), (6, 2, 3, 3), 1),
    ("Gemm", {}, (2, 6), (6, 4), 1),
    ("Gemm", {"transB": 1}, (2, 6), (4, 6), 1),
    ("Gemm", {"transA": 1}, (6, 2), (6, 4), 1),
    ("MatMul", {}, (2, 6), (6, 4), 1),
    ("MatMul", {}, (3, 2, 6), (3, 6, 4), 2),
]


def _model(op: str, attrs: dict[str, Any], weight: np.ndarray) -> onnx.ModelProto:
    node = helper.make_node(op, ["x", "w"], ["y"], name="n", **attrs)
    graph = helper.make_graph([node], "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, None)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                              [numpy_helper.from_array(weight, "w")])
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _run(op: str, attrs: dict[str, Any], x: np.ndarray, weight: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(_model(op, attrs, weight).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    return session.run(None, {"x": x})[0]


def _nodes(op: str, attrs: dict[str, Any], weight: np.ndarray) -> list[Any]:
    proto = _model(op, attrs, weight)
    return [proto.graph.node[0], gs.import_onnx(proto).nodes[0]]


@pytest.mark.parametrize(("op", "attrs", "x_shape", "w_shape", "y_axis"), CASES)
def test_axes_match_what_onnx_runtime_computes(op: str, attrs: dict[str, Any], x_shape: tuple[int, ...],
                                               w_shape: tuple[int, ...], y_axis: int) -> None:
    rng = np.random.default_rng(0)
    x = rng.standard_normal(x_shape).astype(np.float32)
    weight = rng.standard_normal(w_shape).astype(np.float32)
    y = _run(op, attrs, x, weight)
    for node in _nodes(op, attrs, weight):  # an onnx NodeProto and a graphsurgeon node alike
        out_axis, k_axis = weight_output_axis(node, weight.ndim), weight_reduction_axis(node, weight.ndim)
        assert output_channels(node, w_shape) == y.shape[y_axis]
        x_axis = data_channel_axis(node)
        assert input_channels(node, w_shape) == x.shape[x_axis]
        # zeroing weight slice 0 on the output axis zeroes output channel 0 (of each group: ConvTranspose)
        cut = weight.copy()
        cut[(slice(None),) * out_axis + (0,)] = 0
        y_cut = _run(op, attrs, x, cut)
        changed = np.any(y_cut != y, axis=tuple(a for a in range(y.ndim) if a != y_axis))
        per_group = w_shape[out_axis] if op == "ConvTranspose" else y.shape[y_axis]
        assert changed.tolist() == [c % per_group == 0 for c in range(y.shape[y_axis])]
        assert not np.any(np.take(y_cut, 0, axis=y_axis))
        # zeroing weight slice 0 on the reduction axis equals zeroing the input channel it reads
        cut = weight.copy()
        cut[(slice(None),) * k_axis + (0,)] = 0
        x_cut = x.copy()
        first_of_each_group = range(0, x.shape[x_axis], x.shape[x_axis] // int(attrs.get("group", 1))) \
            if op == "Conv" else [0]
        for c in first_of_each_group:
            x_cut[(slice(None),) * (x_axis % x.ndim) + (c,)] = 0
        np.testing.assert_allclose(_run(op, attrs, x, cut), _run(op, attrs, x_cut, weight), atol=1e-5)


def test_compute_ops_have_weight_axes_and_others_do_not() -> None:
    for op in COMPUTE_OPS:
        weight_output_axis(helper.make_node(op, ["x", "w"], ["y"]))
    with pytest.raises(ValueError, match="Relu has no weight"):
        weight_output_axis(helper.make_node("Relu", ["x"], ["y"]))


def test_a_matmul_bias_is_one_value_per_output_column() -> None:
    """The planner and the tflite lowering ask the same question of a MatMul's constant Add."""
    assert is_matmul_bias((16, 32), (32,)) and is_matmul_bias((16, 32), (1, 1, 32))
    assert not is_matmul_bias((16, 32), (16,))  # per input row: not a bias
    assert not is_matmul_bias((16, 32), (8, 32))  # per token: changes more than the columns
    assert not is_matmul_bias((16, 32), ())  # a scalar
    assert not is_matmul_bias((2, 16, 32), (32,))  # a batched weight: no FULLY_CONNECTED
