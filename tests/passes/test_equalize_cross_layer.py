"""EqualizeCrossLayer: exact in ORT (1e-5), ranges balanced, depthwise, ReLU6 only when provably safe."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _graphs import apply, check_pass, check_refused, init, make_model, randn, value
from onnx import helper, numpy_helper

from dsqc.passes import EqualizeCrossLayer

X = randn((2, 8, 6, 6), seed=3, scale=2.0)


def _spread(w: np.ndarray, seed: int) -> np.ndarray:
    """Per-output-channel magnitudes over two decades: what CLE is for."""
    factors = np.logspace(-1, 1, w.shape[0])[np.random.default_rng(seed).permutation(w.shape[0])]
    return (w * factors.reshape(-1, *([1] * (w.ndim - 1)))).astype(np.float32)


def conv(name: str, x: str, y: str, w: np.ndarray, bias: bool = True, group: int = 1) -> tuple[list, list]:
    inits = [init(f"{name}_w", w)]
    inputs = [x, f"{name}_w"]
    if bias:
        inits.append(init(f"{name}_b", randn((w.shape[0],), seed=w.size % 97)))
        inputs.append(f"{name}_b")
    pad = w.shape[-1] // 2
    node = helper.make_node("Conv", inputs, [y], name=name, group=group, pads=[pad] * 4)
    return [node], inits


def chain(act: str | None, group2: int = 1, cmid: int = 8, **act_attrs: float) -> onnx.ModelProto:
    """x → Conv(8→cmid) → act → Conv(cmid→6, group2) → y."""
    n1, i1 = conv("c1", "x", "z", _spread(randn((cmid, 8, 3, 3), seed=4), 1))
    w2 = randn((6 if group2 == 1 else cmid, cmid // group2, 3, 3), seed=5)
    n2, i2 = conv("c2", "a" if act else "z", "y", w2, group=group2)
    nodes = [*n1, *n2]
    inits = [*i1, *i2]
    if act == "PRelu":
        inits.append(init("slope", np.full((cmid, 1, 1), 0.1, np.float32)))
        nodes.insert(1, helper.make_node("PRelu", ["z", "slope"], ["a"], name="act"))
    elif act == "Clip":
        inits += [init("lo", np.float32(act_attrs["min"])), init("hi", np.float32(act_attrs["max"]))]
        nodes.insert(1, helper.make_node("Clip", ["z", "lo", "hi"], ["a"], name="act"))
    elif act:
        nodes.insert(1, helper.make_node(act, ["z"], ["a"], name="act", **act_attrs))
    return make_model(nodes, [value("x", X.shape)], [value("y", None)], inits)


def weights(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}


@pytest.mark.parametrize(("act", "attrs"), [("Relu", {}), ("LeakyRelu", {"alpha": 0.1}), ("PRelu", {}),
                                            (None, {})])
def test_homogeneous_chain_is_exact_and_balanced(act: str | None, attrs: dict) -> None:
    after = check_pass(EqualizeCrossLayer(), chain(act, **attrs), {"x": X})
    w = weights(after)
    r1 = np.abs(w["c1_w"]).reshape(8, -1).max(axis=1)
    r2 = np.abs(w["c2_w"]).transpose(1, 0, 2, 3).reshape(8, -1).max(axis=1)
    np.testing.assert_allclose(r1, r2, rtol=1e-3)


def test_depthwise_expand_project_chain() -> None:
    """1x1 expand → Relu → 3x3 depthwise → Relu → 1x1 project (MobileNetV2 without ReLU6)."""
    n1, i1 = conv("expand", "x", "e", _spread(randn((16, 8, 1, 1), seed=6), 2))
    n2, i2 = conv("dw", "er", "d", _spread(randn((16, 1, 3, 3), seed=7), 3), group=16)
    n3, i3 = conv("project", "dr", "y", randn((8, 16, 1, 1), seed=8), bias=False)
    nodes = [*n1, helper.make_node("Relu", ["e"], ["er"]), *n2, helper.make_node("Relu", ["d"], ["dr"]), *n3]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None)], [*i1, *i2, *i3])
    after = check_pass(EqualizeCrossLayer(), model, {"x": X})
    w = weights(after)
    r_expand = np.abs(w["expand_w"]).reshape(16, -1).max(axis=1)
    r_dw = np.abs(w["dw_w"]).reshape(16, -1).max(axis=1)
    r_project = np.abs(w["project_w"]).transpose(1, 0, 2, 3).reshape(16, -1).max(axis=1)
    np.testing.assert_allclose(r_expand, r_dw, rtol=1e-3)  # converged: one range per channel
    np.testing.assert_allclose(r_dw, r_project, rtol=1e-3)


def test_grouped_consumer() -> None:
    check_pass(EqualizeCrossLayer(), chain("Relu", group2=2), {"x": X})


def relu6_chain(dw_scale: float) -> onnx.ModelProto:
    """x → Clip(0,6) → depthwise Conv → Clip(0,6) → 1x1 Conv: the depthwise input is bounded."""
    dw = _spread(randn((8, 1, 3, 3), seed=9), 4) * dw_scale
    n1, i1 = conv("dw", "xc", "z", dw.astype(np.float32), group=8)
    n2, i2 = conv("pw", "a", "y", randn((6, 8, 1, 1), seed=10))
    inits = [*i1, *i2, init("lo", np.float32(0.0)), init("hi", np.float32(6.0))]
    nodes = [helper.make_node("Clip", ["x", "lo", "hi"], ["xc"]), *n1,
             helper.make_node("Clip", ["z", "lo", "hi"], ["a"], name="relu6"), *n2]
    return make_model(nodes, [value("x", X.shape)], [value("y", None)], inits)


def test_relu6_scales_only_channels_that_never_saturate() -> None:
    feeds = {"x": (X * 4).astype(np.float32)}  # reaches both clip bounds
    model = relu6_chain(0.1)
    after = check_pass(EqualizeCrossLayer(), model, feeds)
    before_w, after_w = weights(model)["dw_w"], weights(after)["dw_w"]
    changed = ~np.isclose(np.abs(before_w).reshape(8, -1).max(1), np.abs(after_w).reshape(8, -1).max(1))
    assert 0 < changed.sum() < 8, changed  # channels whose pre-activation can pass 6 keep s = 1


def test_relu6_refused_when_the_bound_can_be_reached() -> None:
    check_refused(EqualizeCrossLayer(), relu6_chain(10.0))


def test_relu6_refused_without_bounded_input() -> None:
    check_refused(EqualizeCrossLayer(), chain("Clip", min=0.0, max=6.0))


@pytest.mark.parametrize(("act", "attrs"), [("Sigmoid", {}), ("Tanh", {}), ("HardSwish", {}),
                                            ("Clip", {"min": -1.0, "max": 1.0})])
def test_non_homogeneous_refused(act: str, attrs: dict) -> None:
    check_refused(EqualizeCrossLayer(), chain(act, **attrs))


def test_silu_refused() -> None:
    """SiLU = z · sigmoid(z): z fans out to Sigmoid and Mul, and SiLU is not homogeneous anyway."""
    n1, i1 = conv("c1", "x", "z", _spread(randn((8, 8, 3, 3), seed=4), 1))
    n2, i2 = conv("c2", "a", "y", randn((6, 8, 3, 3), seed=5))
    nodes = [*n1, helper.make_node("Sigmoid", ["z"], ["s"]), helper.make_node("Mul", ["z", "s"], ["a"]), *n2]
    model = make_model(nodes, [value("x", X.shape)], [value("y", None)], [*i1, *i2])
    check_refused(EqualizeCrossLayer(), model)


def test_fan_out_refused() -> None:
    model = chain("Relu")
    model.graph.output.append(value("a", None))
    check_refused(EqualizeCrossLayer(), model)


def test_shared_weight_refused() -> None:
    w = randn((8, 8, 3, 3), seed=4)
    nodes = [helper.make_node("Conv", ["x", "w"], ["z"], pads=[1] * 4),
             helper.make_node("Relu", ["z"], ["a"]),
             helper.make_node("Conv", ["a", "w"], ["y"], pads=[1] * 4)]
    check_refused(EqualizeCrossLayer(), make_model(nodes, [value("x", X.shape)], [value("y", None)],
                                                   [init("w", w)]))


def test_second_run_changes_nothing() -> None:
    _, after = apply(EqualizeCrossLayer(), chain("Relu"))
    result, _ = apply(EqualizeCrossLayer(), after)
    assert not result.modified
