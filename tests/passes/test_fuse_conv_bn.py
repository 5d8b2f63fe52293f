from __future__ import annotations

import numpy as np
import onnx
import pytest
from _graphs import (
    bn_node,
    bn_params,
    check_pass,
    check_refused,
    init,
    make_model,
    ops,
    randn,
    value,
)
from onnx import helper

from dsqc.passes import FuseConvBatchNorm

X = randn((2, 8, 6, 6), seed=3)


def conv_bn(group: int = 1, bias: bool = True, cout: int = 8) -> onnx.ModelProto:
    inputs = ["x", "w", "b"] if bias else ["x", "w"]
    inits = [init("w", randn((cout, 8 // group, 3, 3), seed=4))]
    if bias:
        inits.append(init("b", randn((cout,), seed=5)))
    nodes = [
        helper.make_node("Conv", inputs, ["c"], name="conv", group=group, pads=[1, 1, 1, 1]),
        bn_node("bn", "c", "y"),
    ]
    return make_model(
        nodes, [value("x", X.shape)], [value("y", None)], [*inits, *bn_params("bn", cout)]
    )


@pytest.mark.parametrize(
    ("group", "bias", "cout"), [(1, True, 8), (1, False, 6), (2, True, 8), (8, False, 8)]
)
def test_conv(group: int, bias: bool, cout: int) -> None:
    after = check_pass(FuseConvBatchNorm(), conv_bn(group, bias, cout), {"x": X})
    assert ops(after) == ["Conv"]
    assert after.graph.node[0].name == "conv" and after.graph.output[0].name == "y"


@pytest.mark.parametrize(("group", "stride", "bias"), [(1, 1, True), (2, 2, False), (2, 2, True)])
def test_conv_transpose(group: int, stride: int, bias: bool) -> None:
    cout = 6
    inits = [init("w", randn((8, cout // group, 3, 3), seed=6))]
    if bias:
        inits.append(init("b", randn((cout,), seed=7)))
    node = helper.make_node(
        "ConvTranspose", ["x", "w", "b"] if bias else ["x", "w"], ["c"],
        group=group, strides=[stride, stride],
    )
    model = make_model(
        [node, bn_node("bn", "c", "y")], [value("x", X.shape)], [value("y", None)],
        [*inits, *bn_params("bn", cout)],
    )
    after = check_pass(FuseConvBatchNorm(), model, {"x": X})
    assert ops(after) == ["ConvTranspose"]


@pytest.mark.parametrize(("trans_b", "with_c"), [(0, True), (1, False), (1, True), (0, False)])
def test_gemm(trans_b: int, with_c: bool) -> None:
    a = randn((5, 12), seed=8)
    b_shape = (10, 12) if trans_b else (12, 10)
    inits = [init("B", randn(b_shape, seed=9))]
    if with_c:
        inits.append(init("C", randn((1, 10), seed=10)))
    node = helper.make_node(
        "Gemm", ["a", "B", "C"] if with_c else ["a", "B"], ["g"],
        transB=trans_b, alpha=1.5, beta=0.5,
    )
    model = make_model(
        [node, bn_node("bn", "g", "y")], [value("a", a.shape)], [value("y", None)],
        [*inits, *bn_params("bn", 10)],
    )
    after = check_pass(FuseConvBatchNorm(), model, {"a": a})
    assert ops(after) == ["Gemm"]


def test_matmul_2d_becomes_gemm() -> None:
    a = randn((5, 12), seed=11)
    model = make_model(
        [helper.make_node("MatMul", ["a", "W"], ["m"], name="mm"), bn_node("bn", "m", "y")],
        [value("a", a.shape)], [value("y", None)],
        [init("W", randn((12, 10), seed=12)), *bn_params("bn", 10)],
    )
    after = check_pass(FuseConvBatchNorm(), model, {"a": a})
    assert ops(after) == ["Gemm"]


def test_matmul_weight_left_3d_activation() -> None:
    """MatMul(W[C,K], X[B,K,L]) → [B,C,L]: BN channel axis 1 is W's row axis, so it folds."""
    x = randn((2, 12, 7), seed=13)
    model = make_model(
        [helper.make_node("MatMul", ["W", "x"], ["m"], name="mm"), bn_node("bn", "m", "y")],
        [value("x", x.shape)], [value("y", None)],
        [init("W", randn((10, 12), seed=14)), *bn_params("bn", 10)],
    )
    after = check_pass(FuseConvBatchNorm(), model, {"x": x})
    assert ops(after) == ["MatMul", "Add"]


def test_matmul_3d_activation_times_weight_refused() -> None:
    """MatMul(X[B,T,K], W[K,N]) → [B,T,N]: BN scales axis 1 (T), which no W column scale can do."""
    model = make_model(
        [helper.make_node("MatMul", ["x", "W"], ["m"]), bn_node("bn", "m", "y")],
        [value("x", (2, 10, 12))], [value("y", None)],
        [init("W", randn((12, 10), seed=15)), *bn_params("bn", 10)],
    )
    check_refused(FuseConvBatchNorm(), model)


def test_shared_weight_refused() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "w"], ["c2"], pads=[1, 1, 1, 1]),
        bn_node("bn", "c1", "y1"),
        helper.make_node("Add", ["y1", "c2"], ["y"]),
    ]
    model = make_model(
        nodes, [value("x", X.shape)], [value("y", None)],
        [init("w", randn((8, 8, 3, 3), seed=4)), *bn_params("bn", 8)],
    )
    check_refused(FuseConvBatchNorm(), model)


def test_non_constant_weight_refused() -> None:
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("bn", "c", "y")],
        [value("x", X.shape), value("w", (8, 8, 3, 3))], [value("y", None)], bn_params("bn", 8),
    )
    check_refused(FuseConvBatchNorm(), model)


def test_graph_output_intermediate_refused() -> None:
    model = conv_bn()
    model.graph.output.append(value("c", None))
    check_refused(FuseConvBatchNorm(), model)


def test_training_outputs_refused() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"]),
        helper.make_node(
            "BatchNormalization", ["c", "bn_scale", "bn_bias", "bn_mean", "bn_var"],
            ["y", "running_mean", "running_var"], training_mode=1,
        ),
    ]
    model = make_model(
        nodes, [value("x", X.shape)], [value("y", None), value("running_mean", None)],
        [init("w", randn((8, 8, 3, 3), seed=4)), *bn_params("bn", 8)], opset=15,
    )
    check_refused(FuseConvBatchNorm(), model)


def test_fp16_weight_keeps_dtype() -> None:
    x = X.astype(np.float16)
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("bn", "c", "y")],
        [value("x", x.shape, onnx.TensorProto.FLOAT16)], [value("y", None, onnx.TensorProto.FLOAT16)],
        [init("w", randn((8, 8, 1, 1), seed=4).astype(np.float16)),
         *[init(t.name, onnx.numpy_helper.to_array(t).astype(np.float16))
           for t in bn_params("bn", 8)]],
    )
    from dsqc.ir import Model

    graph = Model.from_proto(model)
    assert FuseConvBatchNorm()(graph).modified
    weights = [t for t in graph.to_proto().graph.initializer]
    assert {w.data_type for w in weights} == {onnx.TensorProto.FLOAT16}
