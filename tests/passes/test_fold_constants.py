from __future__ import annotations

import numpy as np
from _graphs import check_pass, check_refused, init, make_model, ops, randn, value
from onnx import TensorProto, helper, numpy_helper

from dsqc.passes import FoldConstants

X = randn((2, 3, 4), seed=1)


def _const(name: str, array: np.ndarray) -> helper.NodeProto:
    return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(array))


def test_folds_constant_chain_and_static_shape() -> None:
    nodes = [
        _const("c", randn((4,), seed=2)),
        helper.make_node("Add", ["c", "w"], ["s"]),
        helper.make_node("Mul", ["s", "s"], ["s2"]),
        helper.make_node("Sqrt", ["s2"], ["r"]),
        helper.make_node("Mul", ["x", "r"], ["m"], name="scale"),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero1"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["m", "target"], ["y"], name="flatten"),
    ]
    inits = [
        init("w", randn((4,), seed=3)),
        init("zero", np.array(0, np.int64)),
        init("zero1", np.array([0], np.int64)),
        init("minus1", np.array([-1], np.int64)),
    ]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None)], inits)
    after = check_pass(FoldConstants(), model, {"x": X})
    assert ops(after) == ["Mul", "Reshape"]
    assert [n.name for n in after.graph.node] == ["scale", "flatten"]
    assert not any(n.op_type == "Constant" for n in after.graph.node)


def test_lone_constant_node_becomes_initializer() -> None:
    model = make_model(
        [_const("c", randn((3,), seed=4)), helper.make_node("Add", ["x", "c"], ["y"])],
        [value("x", (3,))], [value("y", None)],
    )
    after = check_pass(FoldConstants(), model, {"x": randn((3,), seed=5)})
    assert ops(after) == ["Add"]
    assert [t.name for t in after.graph.initializer] == ["c"]


def test_large_result_is_not_materialised() -> None:
    nodes = [
        helper.make_node("Expand", ["one", "big"], ["e"]),
        helper.make_node("Add", ["x", "e"], ["y"]),
    ]
    inits = [init("one", np.ones((1,), np.float32)), init("big", np.array([4096], np.int64))]
    model = make_model(nodes, [value("x", (4096,))], [value("y", None)], inits)
    check_refused(FoldConstants(size_limit=1024), model)


def test_random_and_dynamic_shapes_are_kept() -> None:
    nodes = [
        helper.make_node("RandomNormal", [], ["noise"], shape=[3], dtype=TensorProto.FLOAT),
        helper.make_node("Add", ["x", "noise"], ["n"]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Reshape", ["n", "shape"], ["y"]),
    ]
    model = make_model(nodes, [value("x", ("N", 3))], [value("y", None)])
    check_refused(FoldConstants(), model)


def test_variable_graph_is_unchanged() -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]), helper.make_node("Add", ["r", "w"], ["y"])],
        [value("x", (3,))], [value("y", None)], [init("w", randn((3,), seed=6))],
    )
    check_refused(FoldConstants(), model)


def test_shapes_are_inferred_again_after_folding() -> None:
    """Pad's pads only become constant by folding; its output shape, and so Shape, follow."""
    x = randn((2, 3, 4, 4), seed=7)
    nodes = [
        helper.make_node("ConstantOfShape", ["eight"], ["zeros"],
                         value=numpy_helper.from_array(np.array([0], np.int64))),
        helper.make_node("Add", ["zeros", "ones"], ["pads"]),
        helper.make_node("Pad", ["x", "pads"], ["p"], name="pad"),
        helper.make_node("Shape", ["p"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["batch"], axis=0),
        helper.make_node("Unsqueeze", ["batch", "zero1"], ["batch1"]),
        helper.make_node("Concat", ["batch1", "minus1"], ["target"], axis=0),
        helper.make_node("Reshape", ["p", "target"], ["y"], name="flatten"),
    ]
    inits = [
        init("eight", np.array([8], np.int64)),
        init("ones", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)),
        init("zero", np.array(0, np.int64)),
        init("zero1", np.array([0], np.int64)),
        init("minus1", np.array([-1], np.int64)),
    ]
    model = make_model(nodes, [value("x", x.shape)], [value("y", None)], inits)
    pad_out = next(v for v in model.graph.value_info if v.name == "p")
    assert not all(d.HasField("dim_value") for d in pad_out.type.tensor_type.shape.dim)
    after = check_pass(FoldConstants(), model, {"x": x})
    assert ops(after) == ["Pad", "Reshape"]
