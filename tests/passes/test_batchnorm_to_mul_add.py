from __future__ import annotations

import pytest
from _graphs import bn_node, bn_params, check_pass, check_refused, init, make_model, ops, randn, value
from onnx import helper

from dsqc.passes import BatchNormToMulAdd


@pytest.mark.parametrize("shape", [(2, 6), (2, 6, 5), (2, 6, 4, 3), (1, 6, 2, 3, 2)])
def test_bn_after_relu_becomes_mul_add(shape: tuple[int, ...]) -> None:
    x = randn(shape, seed=2)
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]), bn_node("bn", "r", "y", epsilon=1e-3)],
        [value("x", shape)], [value("y", None)], bn_params("bn", 6),
    )
    after = check_pass(BatchNormToMulAdd(), model, {"x": x})
    assert ops(after) == ["Relu", "Mul", "Add"]
    assert after.graph.node[-1].name == "bn" and after.graph.node[-1].output == ["y"]
    assert [list(t.dims) for t in after.graph.initializer] == [[6] + [1] * (len(shape) - 2)] * 2


def test_bn_on_graph_input() -> None:
    x = randn((2, 6, 3, 3), seed=3)
    model = make_model(
        [bn_node("bn", "x", "b"), helper.make_node("Relu", ["b"], ["y"])],
        [value("x", x.shape)], [value("y", None)], bn_params("bn", 6),
    )
    after = check_pass(BatchNormToMulAdd(), model, {"x": x})
    assert ops(after) == ["Mul", "Add", "Relu"]


def test_bn_foldable_into_conv_is_left_alone() -> None:
    model = make_model(
        [helper.make_node("Conv", ["x", "w"], ["c"]), bn_node("bn", "c", "y")],
        [value("x", (1, 3, 5, 5))], [value("y", None)],
        [init("w", randn((6, 3, 1, 1), seed=4)), *bn_params("bn", 6)],
    )
    check_refused(BatchNormToMulAdd(), model)


def test_non_constant_statistics_refused() -> None:
    node = helper.make_node(
        "BatchNormalization", ["x", "bn_scale", "bn_bias", "mean", "bn_var"], ["y"]
    )
    params = [p for p in bn_params("bn", 6) if p.name != "bn_mean"]
    model = make_model(
        [node], [value("x", (2, 6, 3)), value("mean", (6,))], [value("y", None)], params
    )
    check_refused(BatchNormToMulAdd(), model)


def test_unknown_rank_refused() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]), bn_node("bn", "r", "y")],
        [value("x", None)], [value("y", None)], bn_params("bn", 6), check=False,
    )
    check_refused(BatchNormToMulAdd(), model)
