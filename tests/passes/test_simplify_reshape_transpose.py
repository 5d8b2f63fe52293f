from __future__ import annotations

import numpy as np
from _graphs import check_pass, check_refused, init, make_model, ops, randn, value
from onnx import helper

from dsqc.passes import SimplifyReshapeTranspose

X = randn((2, 3, 4), seed=1)


def shape(name: str, dims: list[int]) -> object:
    return init(name, np.array(dims, np.int64))


def test_reshape_chain_collapses_to_last_reshape() -> None:
    nodes = [
        helper.make_node("Flatten", ["x"], ["f"], axis=1),
        helper.make_node("Unsqueeze", ["f", "ax"], ["u"]),
        helper.make_node("Reshape", ["u", "s1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "s2"], ["y"], name="last"),
    ]
    inits = [shape("ax", [0]), shape("s1", [6, 4]), shape("s2", [4, -1])]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None)], inits)
    after = check_pass(SimplifyReshapeTranspose(), model, {"x": X})
    assert ops(after) == ["Reshape"] and after.graph.node[0].name == "last"
    assert [t.name for t in after.graph.initializer] == ["s2"]


def test_zero_entry_copying_a_static_middle_dim_is_spelled_out() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "s2"], ["y"]),
    ]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None)],
                       [shape("s1", [2, 12]), shape("s2", [0, 3, -1])])
    after = check_pass(SimplifyReshapeTranspose(), model, {"x": X})
    assert ops(after) == ["Reshape"]
    assert list(np.frombuffer(after.graph.initializer[0].raw_data, np.int64)) == [2, 3, -1]


def test_transposes_cancel_and_output_name_is_kept() -> None:
    x = randn((2, 3, 4, 5), seed=2)
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["t"], ["y"], perm=[0, 3, 1, 2]),
    ]
    model = make_model(nodes, [value("x", x.shape)], [value("y", None)])
    after = check_pass(SimplifyReshapeTranspose(), model, {"x": x})
    assert ops(after) == ["Relu"] and list(after.graph.node[0].output) == ["y"]


def test_transposes_compose_including_default_perm() -> None:
    x = randn((2, 3, 4, 5), seed=3)
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"]),  # reverse
        helper.make_node("Transpose", ["t"], ["y"], perm=[1, 0, 3, 2]),
    ]
    model = make_model(nodes, [value("x", x.shape)], [value("y", None)])
    after = check_pass(SimplifyReshapeTranspose(), model, {"x": x})
    assert ops(after) == ["Transpose"]


def test_identity_between_graph_input_and_output_stays_as_one_transpose() -> None:
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["t"], ["y"], perm=[1, 0, 2]),
    ]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None)])
    after = check_pass(SimplifyReshapeTranspose(), model, {"x": X})
    assert ops(after) == ["Transpose"]


def test_middle_graph_output_refused() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "s2"], ["y"]),
        helper.make_node("Transpose", ["x"], ["t"], perm=[1, 0, 2]),
        helper.make_node("Transpose", ["t"], ["z"], perm=[0, 2, 1]),
        helper.make_node("Relu", ["t"], ["w"]),
    ]
    model = make_model(
        nodes, [value("x", X.shape)],
        [value("y", None), value("r1", None), value("z", None), value("w", None)],
        [shape("s1", [6, 4]), shape("s2", [24])],
    )
    check_refused(SimplifyReshapeTranspose(), model)


def test_zero_entry_copying_a_dynamic_dim_refused() -> None:
    nodes = [
        helper.make_node("Reshape", ["x", "s1"], ["r1"]),
        helper.make_node("Reshape", ["r1", "s2"], ["y"]),
    ]
    model = make_model(nodes, [value("x", ("N", 12))], [value("y", None)],
                       [shape("s1", [-1, 3, 4]), shape("s2", [0, 12])])
    check_refused(SimplifyReshapeTranspose(), model)
