from __future__ import annotations

import onnx
import pytest
from _graphs import check_pass, check_refused, init, make_model, ops, randn, value
from onnx import helper

from dsqc.passes import FoldAddIntoBias

X = randn((2, 4, 6, 6), seed=1)


def conv_add(shape: tuple[int, ...], bias: bool = True, const_first: bool = False,
             op: str = "Conv", group: int = 1) -> onnx.ModelProto:
    w_shape = (4, 6 // group, 3, 3) if op == "ConvTranspose" else (6, 4, 3, 3)
    inits = [init("w", randn(w_shape, seed=2)), init("d", randn(shape, seed=3))]
    if bias:
        inits.append(init("b", randn((6,), seed=4)))
    conv = helper.make_node(op, ["x", "w", "b"] if bias else ["x", "w"], ["c"], name="conv",
                            group=group, pads=[1, 1, 1, 1])
    add = helper.make_node("Add", ["d", "c"] if const_first else ["c", "d"], ["y"])
    return make_model([conv, add], [value("x", X.shape)], [value("y", None)], inits)


@pytest.mark.parametrize(
    ("shape", "bias", "const_first"),
    [((1, 6, 1, 1), True, False), ((6, 1, 1), False, True), ((), True, True), ((1,), False, False)],
)
def test_conv(shape: tuple[int, ...], bias: bool, const_first: bool) -> None:
    after = check_pass(FoldAddIntoBias(), conv_add(shape, bias, const_first), {"x": X})
    assert ops(after) == ["Conv"] and after.graph.node[0].name == "conv"
    assert list(after.graph.node[0].output) == ["y"]


def test_conv_transpose_group2() -> None:
    model = conv_add((6, 1, 1), bias=False, op="ConvTranspose", group=2)
    after = check_pass(FoldAddIntoBias(), model, {"x": X})
    assert ops(after) == ["ConvTranspose"]


@pytest.mark.parametrize(("trans_b", "with_c", "shape"),
                         [(1, True, (5,)), (0, False, (1, 5)), (0, True, ())])
def test_gemm(trans_b: int, with_c: bool, shape: tuple[int, ...]) -> None:
    a = randn((3, 4), seed=5)
    inits = [init("B", randn((5, 4) if trans_b else (4, 5), seed=6)), init("d", randn(shape, seed=7))]
    if with_c:
        inits.append(init("C", randn((3, 1), seed=8)))
    gemm = helper.make_node("Gemm", ["a", "B", "C"] if with_c else ["a", "B"], ["g"],
                            transB=trans_b, beta=0.5)
    model = make_model([gemm, helper.make_node("Add", ["g", "d"], ["y"])],
                       [value("a", a.shape)], [value("y", None)], inits)
    after = check_pass(FoldAddIntoBias(), model, {"a": a})
    assert ops(after) == ["Gemm"]


def test_vector_along_width_refused() -> None:
    """A [C] constant on NCHW adds along W (here W == C == 6): not a per-channel bias."""
    check_refused(FoldAddIntoBias(), conv_add((6,)))


def test_shared_bias_refused() -> None:
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c1"]),
        helper.make_node("Conv", ["x", "w", "b"], ["c2"]),
        helper.make_node("Add", ["c1", "d"], ["y1"]),
        helper.make_node("Add", ["y1", "c2"], ["y"]),
    ]
    inits = [init("w", randn((6, 4, 3, 3), seed=2)), init("b", randn((6,), seed=4)),
             init("d", randn((6, 1, 1), seed=3))]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None)], inits)
    check_refused(FoldAddIntoBias(), model)


def test_conv_output_is_graph_output_refused() -> None:
    model = conv_add((6, 1, 1))
    model.graph.output.append(value("c", None))
    check_refused(FoldAddIntoBias(), model)


def test_non_constant_operand_refused() -> None:
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"]), helper.make_node("Add", ["c", "d"], ["y"])]
    model = make_model(nodes, [value("x", X.shape), value("d", (6, 1, 1))], [value("y", None)],
                       [init("w", randn((6, 4, 3, 3), seed=2))])
    check_refused(FoldAddIntoBias(), model)
