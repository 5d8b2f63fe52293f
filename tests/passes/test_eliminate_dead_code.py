from __future__ import annotations

from _graphs import check_pass, check_refused, init, make_model, randn, value
from onnx import helper

from dsqc.passes import EliminateDeadCode

X = randn((2, 5), seed=1)


def test_removes_dead_branch_and_unused_initializers() -> None:
    nodes = [
        helper.make_node("Sigmoid", ["x"], ["s"], name="dead_sigmoid"),
        helper.make_node("Mul", ["s", "w_dead"], ["m"], name="dead_mul"),
        helper.make_node("Add", ["x", "w"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["y"], name="relu"),
    ]
    inits = [init("w", randn((5,), seed=2)), init("w_dead", randn((5,), seed=3)),
             init("w_unused", randn((7,), seed=4))]
    model = make_model(nodes, [value("x", X.shape), value("z", (3,))], [value("y", None)], inits)
    after = check_pass(EliminateDeadCode(), model, {"x": X, "z": randn((3,), seed=5)})
    assert [n.name for n in after.graph.node] == ["add", "relu"]
    assert [t.name for t in after.graph.initializer] == ["w"]
    assert [i.name for i in after.graph.input] == ["x", "z"]


def test_live_graph_unchanged() -> None:
    nodes = [
        helper.make_node("Dropout", ["x"], ["d", "mask"]),
        helper.make_node("Add", ["d", "w"], ["y"]),
    ]
    model = make_model(
        nodes, [value("x", X.shape), value("unused", (1,))], [value("y", None)],
        [init("w", randn((5,), seed=2))],
    )
    check_refused(EliminateDeadCode(), model)
