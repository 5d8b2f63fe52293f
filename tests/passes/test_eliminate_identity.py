from __future__ import annotations

import numpy as np
import onnx
from _graphs import check_pass, check_refused, init, make_model, ops, randn, value
from onnx import TensorProto, helper

from dsqc.passes import EliminateIdentity

X = randn((2, 3, 4), seed=1)


def _noop_chain() -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    nodes = [
        helper.make_node("Identity", ["x"], ["t0"]),
        helper.make_node("Cast", ["t0"], ["t1"], to=TensorProto.FLOAT),
        helper.make_node("Transpose", ["t1"], ["t2"], perm=[0, 1, 2]),
        helper.make_node("Reshape", ["t2", "same"], ["t3"]),
        helper.make_node("Pad", ["t3", "nopad"], ["t4"]),
        helper.make_node("Mul", ["one", "t4"], ["t5"]),
        helper.make_node("Add", ["t5", "zeros"], ["t6"]),
        helper.make_node("Sub", ["t6", "zero"], ["t7"]),
        helper.make_node("Div", ["t7", "one"], ["t8"]),
        helper.make_node("Dropout", ["t8"], ["t9", "mask"], name="drop"),
        helper.make_node("Relu", ["t9"], ["r"], name="relu"),
        helper.make_node("Identity", ["r"], ["y"]),
    ]
    inits = [
        init("same", np.array([2, 0, -1], np.int64)),
        init("nopad", np.zeros(6, np.int64)),
        init("one", np.ones((1, 1), np.float32)),
        init("zeros", np.zeros((3, 1), np.float32)),
        init("zero", np.zeros((), np.float32)),
    ]
    return nodes, inits


def test_removes_every_noop_and_keeps_output_name() -> None:
    nodes, inits = _noop_chain()
    model = make_model(nodes, [value("x", X.shape)], [value("y", None)], inits)
    after = check_pass(EliminateIdentity(), model, {"x": X})
    assert ops(after) == ["Relu"]
    assert after.graph.node[0].name == "relu" and after.graph.node[0].output == ["y"]
    assert not after.graph.initializer


def test_graph_output_rename_redirects_other_readers() -> None:
    nodes = [
        helper.make_node("Relu", ["x"], ["r"]),
        helper.make_node("Identity", ["r"], ["y"]),
        helper.make_node("Sigmoid", ["r"], ["z"]),
    ]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None), value("z", None)])
    after = check_pass(EliminateIdentity(), model, {"x": X})
    assert ops(after) == ["Relu", "Sigmoid"]
    assert list(after.graph.node[1].input) == ["y"]


def test_opset10_pad_attribute() -> None:
    nodes = [
        helper.make_node("Pad", ["x"], ["p"], pads=[0] * 6),
        helper.make_node("Relu", ["p"], ["y"]),
    ]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None)], opset=10)
    after = check_pass(EliminateIdentity(), model, {"x": X})
    assert ops(after) == ["Relu"]


def test_identity_from_graph_input_to_graph_output_refused() -> None:
    model = make_model(
        [helper.make_node("Identity", ["x"], ["y"])], [value("x", X.shape)], [value("y", None)]
    )
    check_refused(EliminateIdentity(), model)


def test_real_ops_refused() -> None:
    nodes = [
        helper.make_node("Mul", ["x", "one3"], ["a"]),  # ones of rank 4 broadcast x to rank 4
        helper.make_node("Add", ["x", "wide"], ["b"]),  # [3, 4] zeros on [2, 1, 4] → [2, 3, 4]
        helper.make_node("Sub", ["zero", "x"], ["c"]),  # 0 - x is a negation
        helper.make_node("Cast", ["x"], ["d"], to=TensorProto.FLOAT16),
        helper.make_node("Transpose", ["x"], ["e"], perm=[0, 2, 1]),
        helper.make_node("Reshape", ["x", "flat"], ["f"]),
        helper.make_node("Dropout", ["x"], ["g", "mask"]),
        helper.make_node("Dropout", ["x", "ratio", "train"], ["h"]),
    ]
    inits = [
        init("one3", np.ones((1, 1, 1, 1), np.float32)),
        init("wide", np.zeros((3, 4), np.float32)),
        init("zero", np.zeros((), np.float32)),
        init("flat", np.array([2, -1], np.int64)),
        init("ratio", np.array(0.5, np.float32)),
        init("train", np.array(True)),
    ]
    outs = [value(n, None, TensorProto.FLOAT16 if n == "d" else TensorProto.FLOAT) for n in "abcdefgh"]
    outs.append(value("mask", None, TensorProto.BOOL))
    model = make_model(nodes, [value("x", (2, 1, 4))], outs, inits)
    check_refused(EliminateIdentity(), model)


def test_reader_inside_if_branch_is_rewired() -> None:
    def branch(op: str, out: str) -> onnx.GraphProto:
        return helper.make_graph([helper.make_node(op, ["t"], [out])], op, [],
                                 [helper.make_tensor_value_info(out, TensorProto.FLOAT, [3])])

    nodes = [
        helper.make_node("Identity", ["x"], ["t"]),
        helper.make_node("If", ["c"], ["y"], then_branch=branch("Relu", "o1"),
                         else_branch=branch("Neg", "o2")),
    ]
    model = make_model(nodes, [value("x", (3,)), value("c", (), TensorProto.BOOL)],
                       [value("y", None)])
    x = randn((3,), seed=2)
    for cond in (True, False):
        after = check_pass(EliminateIdentity(), model, {"x": x, "c": np.array(cond)})
    assert ops(after) == ["If"]
    assert list(after.graph.node[0].attribute[0].g.node[0].input) == ["x"]
