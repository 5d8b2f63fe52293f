from __future__ import annotations

import numpy as np
import onnx
import pytest
from _graphs import check_pass, check_refused, init, make_model, ops, randn, value
from onnx import helper

from dsqc.passes import FoldPadIntoConv

X = randn((1, 3, 7, 6), seed=1)
W = init("w", randn((4, 3, 3, 3), seed=2))


def pad_conv(pad: onnx.NodeProto, inits: list[onnx.TensorProto], opset: int = 17,
             **conv_attrs: object) -> onnx.ModelProto:
    conv = helper.make_node("Conv", ["p", "w"], ["y"], name="conv", **conv_attrs)
    return make_model([pad, conv], [value("x", X.shape)], [value("y", None)], [W, *inits], opset)


def test_pads_input_form_with_existing_conv_pads() -> None:
    pads = init("pads", np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64))
    model = pad_conv(helper.make_node("Pad", ["x", "pads"], ["p"]), [pads], pads=[1, 1, 0, 1])
    after = check_pass(FoldPadIntoConv(), model, {"x": X})
    assert ops(after) == ["Conv"]
    pads_attr = next(a for a in after.graph.node[0].attribute if a.name == "pads")
    assert list(pads_attr.ints) == [2, 3, 3, 1]


@pytest.mark.parametrize("axes", [[2, 3], [-1, -2]])
def test_opset18_axes_and_explicit_zero_value(axes: list[int]) -> None:
    inits = [init("pads", np.array([1, 0, 2, 1], np.int64)), init("axes", np.array(axes, np.int64)),
             init("zero", np.array(0.0, np.float32))]
    pad = helper.make_node("Pad", ["x", "pads", "zero", "axes"], ["p"], mode="constant")
    after = check_pass(FoldPadIntoConv(), pad_conv(pad, inits, opset=18, strides=[2, 1]), {"x": X})
    assert ops(after) == ["Conv"]


def test_opset10_attribute_form() -> None:
    pad = helper.make_node("Pad", ["x"], ["p"], pads=[0, 0, 1, 1, 0, 0, 1, 1], value=0.0)
    after = check_pass(FoldPadIntoConv(), pad_conv(pad, [], opset=10), {"x": X})
    assert ops(after) == ["Conv"]


@pytest.mark.parametrize(
    ("pads", "mode", "value_", "conv_attrs"),
    [
        ([0, 0, 1, 1, 0, 0, 1, 1], "reflect", None, {}),
        ([0, 0, 1, 1, 0, 0, 1, 1], "constant", 1.0, {}),
        ([0, 1, 1, 1, 0, 0, 1, 1], "constant", None, {}),
        ([0, 0, -1, 1, 0, 0, 1, 1], "constant", None, {}),
        ([0, 0, 1, 1, 0, 0, 1, 1], "constant", None, {"auto_pad": "SAME_UPPER"}),
    ],
    ids=["reflect", "nonzero-value", "channel-pad", "negative", "auto-pad"],
)
def test_refused(pads: list[int], mode: str, value_: float | None, conv_attrs: dict) -> None:
    inits = [init("pads", np.array(pads, np.int64))]
    inputs = ["x", "pads"]
    if value_ is not None:
        inits.append(init("val", np.array(value_, np.float32)))
        inputs.append("val")
    cin = 3 + pads[1] + pads[5]
    inits.append(init("w", randn((4, cin, 3, 3), seed=2)))
    pad = helper.make_node("Pad", inputs, ["p"], mode=mode)
    conv = helper.make_node("Conv", ["p", "w"], ["y"], **conv_attrs)
    model = make_model([pad, conv], [value("x", X.shape)], [value("y", None)], inits)
    check_refused(FoldPadIntoConv(), model)


def test_pad_output_with_two_readers_refused() -> None:
    pads = init("pads", np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64))
    nodes = [
        helper.make_node("Pad", ["x", "pads"], ["p"]),
        helper.make_node("Conv", ["p", "w"], ["y"]),
        helper.make_node("Relu", ["p"], ["z"]),
    ]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None), value("z", None)],
                       [W, pads])
    check_refused(FoldPadIntoConv(), model)
