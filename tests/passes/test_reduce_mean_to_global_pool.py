from __future__ import annotations

import numpy as np
import pytest
from _graphs import check_pass, check_refused, init, make_model, ops, randn, value
from onnx import helper

from dsqc.passes import ReduceMeanToGlobalPool


@pytest.mark.parametrize(("shape", "axes", "keep"), [((2, 6, 5, 4), [2, 3], 0), ((2, 6, 5, 4), [-1, -2], 1),
                                                     ((2, 6, 7), [2], 0), ((1, 4, 3, 2, 2), [2, 3, 4], 1)])
def test_spatial_mean_becomes_global_pool(shape: tuple[int, ...], axes: list[int], keep: int) -> None:
    model = make_model(
        [helper.make_node("Relu", ["x"], ["r"]),
         helper.make_node("ReduceMean", ["r"], ["y"], name="mean", axes=axes, keepdims=keep)],
        [value("x", shape)], [value("y", None)])
    after = check_pass(ReduceMeanToGlobalPool(), model, {"x": randn(shape, seed=2)})
    assert ops(after) == ["Relu", "GlobalAveragePool"] + ([] if keep else ["Flatten"])
    assert after.graph.node[-1].name == "mean" and after.graph.node[-1].output == ["y"]


def test_opset_18_axes_input() -> None:
    model = make_model(
        [helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="mean", keepdims=0)],
        [value("x", (2, 6, 5, 4))], [value("y", None)], [init("axes", np.array([2, 3], np.int64))], opset=18)
    after = check_pass(ReduceMeanToGlobalPool(), model, {"x": randn((2, 6, 5, 4), seed=3)})
    assert ops(after) == ["GlobalAveragePool", "Flatten"]


@pytest.mark.parametrize("axes", [[1], [1, 2, 3], [3], [0, 2, 3]])
def test_other_axes_are_left_alone(axes: list[int]) -> None:
    model = make_model([helper.make_node("ReduceMean", ["x"], ["y"], axes=axes, keepdims=0)],
                       [value("x", (2, 6, 5, 4))], [value("y", None)])
    check_refused(ReduceMeanToGlobalPool(), model)


def test_no_axes_means_all_and_is_left_alone() -> None:
    model = make_model([helper.make_node("ReduceMean", ["x"], ["y"], keepdims=0)],
                       [value("x", (2, 6, 5, 4))], [value("y", None)])
    check_refused(ReduceMeanToGlobalPool(), model)
