"""The switch model evaluates a mixed plan exactly as the build writes it: same specs, same Q/DQ, same
bias correction (ORT reference semantics on both sides)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.autoprec.plan_recipe import parse_plan_recipe, plan_recipe_text
from dsqc.autoprec.plan_space import build_space, setting_for
from dsqc.autoprec.switch_model import SwitchModel
from dsqc.backends.hls.profile import HLS_PROFILE
from dsqc.backends.tflite.profile import TFLITE_PROFILE
from dsqc.calibration.data import SampleSet
from dsqc.quant.boosters import BiasCorrector
from dsqc.quant.quantize import quantize_model
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import Precision, QuantPlan
from dsqc.verify import run_batches, session


def csp_block(seed: int = 0) -> onnx.ModelProto:
    """A YOLOv8-style block: Conv → SiLU → Split → (Conv, residual Add) → Concat → Conv. On ``tflite``
    the Concat shares one scale with its inputs; the residual branch runs 20× the range of the other."""
    rng = np.random.default_rng(seed)

    def conv(name: str, cin: int, cout: int, gain: float) -> list[onnx.TensorProto]:
        w = rng.normal(0, gain / np.sqrt(cin * 9), (cout, cin, 3, 3)).astype(np.float32)
        return [numpy_helper.from_array(w, f"{name}.w"),
                numpy_helper.from_array(rng.normal(0, 0.3, cout).astype(np.float32), f"{name}.b")]

    inits = [*conv("c0", 3, 8, 2.0), *conv("c1", 4, 4, 20.0), *conv("c2", 12, 4, 1.0),
             numpy_helper.from_array(np.array([4, 4], np.int64), "halves")]
    pad = {"pads": [1, 1, 1, 1]}
    nodes = [helper.make_node("Conv", ["x", "c0.w", "c0.b"], ["t0"], name="c0", **pad),
             helper.make_node("Sigmoid", ["t0"], ["g0"], name="sig0"),
             helper.make_node("Mul", ["t0", "g0"], ["s0"], name="silu0"),
             helper.make_node("Split", ["s0", "halves"], ["a", "b"], name="split", axis=1),
             helper.make_node("Conv", ["b", "c1.w", "c1.b"], ["t1"], name="c1", **pad),
             helper.make_node("Add", ["b", "t1"], ["r"], name="residual"),
             helper.make_node("Concat", ["a", "b", "r"], ["cat"], name="cat", axis=1),
             helper.make_node("Conv", ["cat", "c2.w", "c2.b"], ["y"], name="c2", **pad)]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 8, 8])
    model = helper.make_model(helper.make_graph(nodes, "csp", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples() -> SampleSet:
    return SampleSet({"x": np.random.default_rng(1).normal(size=(16, 3, 8, 8)).astype(np.float32)}, "normal")


@pytest.mark.parametrize("float_nodes", [(), ("c1",), ("residual",), ("c0", "c2"), ("silu0", "cat")])
def test_a_mixed_plan_evaluates_as_built(float_nodes: tuple[str, ...]) -> None:
    fp32 = csp_block()
    samples = _samples()
    recipe = Recipe()
    space = build_space(fp32, TFLITE_PROFILE, recipe, samples, int4=False)
    correct = BiasCorrector(fp32, samples)
    correct(quantize_model(fp32, TFLITE_PROFILE, recipe, samples, known=space.stats).model)
    switch = SwitchModel(space)
    assert switch.correct_int8_biases(correct.bias_shifts) == 3
    assignment = {n: Precision.FP32 if n in float_nodes else Precision.INT8 for n in space.choices}
    planned = space.planned(assignment)

    text = plan_recipe_text(recipe, assignment, {})
    built = quantize_model(fp32, TFLITE_PROFILE, parse_plan_recipe(text, "plan"), samples, known=space.stats)
    assert planned.tensors.keys() == built.plan.tensors.keys()
    for name, spec in planned.tensors.items():
        np.testing.assert_array_equal(spec.scale, built.plan.tensors[name].scale, err_msg=name)
    expected = run_batches(session(correct(built.model), optimize=False), list(samples.batches(8)))["y"]
    got = switch.bind(list(samples.batches(8)), segmented=False).run(planned)["y"]
    np.testing.assert_array_equal(got, expected)


@pytest.mark.parametrize("wide_nodes", [(), ("c1",), ("c0", "residual"), ("c0", "c1", "residual", "c2")])
def test_an_int8_int16_plan_evaluates_as_built_on_hls(wide_nodes: tuple[str, ...]) -> None:
    """hls: a node at ``Precision.INT16`` reads and writes int16 tensors; the switch model runs them
    through its int16 Q/DQ branch, so the plan evaluates exactly as the QDQ model built from its recipe
    (no bias correction here, so the two agree bit for bit)."""
    fp32 = csp_block()
    samples = _samples()
    space = build_space(fp32, HLS_PROFILE, Recipe(), samples, int4=False)
    assignment = {n: Precision.INT16 if n in wide_nodes else Precision.INT8 for n in space.choices}
    planned = space.planned(assignment)
    assert {n for n, d in planned.nodes.items() if d.wide} == set(wide_nodes)
    assert any(spec.dtype == "int16" for spec in planned.tensors.values()) == bool(wide_nodes)
    built = quantize_model(fp32, HLS_PROFILE, parse_plan_recipe(plan_recipe_text(Recipe(), assignment, {}),
                                                                 "plan"), samples, known=space.stats)
    for name, spec in planned.tensors.items():
        assert spec.dtype == built.plan.tensors[name].dtype, name
        np.testing.assert_array_equal(spec.scale, built.plan.tensors[name].scale, err_msg=name)
    expected = run_batches(session(built.model, optimize=False), list(samples.batches(8)))["y"]
    got = SwitchModel(space).bind(list(samples.batches(8)), segmented=False).run(planned)["y"]
    np.testing.assert_array_equal(got, expected)


def test_restrict_alone_misses_what_float_neighbours_change() -> None:
    """Why the search measures ``planned``: with the Concat float, the Split's shared scale group
    (``s0``, ``a``, ``b``) no longer spans the residual's wide range; with the SiLU float too, the Split
    between two float nodes stays float. ``restrict`` keeps the all-INT8 plan's specs and decisions."""
    fp32 = csp_block()
    samples = _samples()
    space = build_space(fp32, TFLITE_PROFILE, Recipe(), samples, int4=False)

    def both(float_nodes: set[str]) -> tuple[QuantPlan, QuantPlan]:
        assignment = {n: Precision.FP32 if n in float_nodes else Precision.INT8 for n in space.choices}
        settings = {n: setting_for(p, bool(space.choices[n].consts)) for n, p in assignment.items()}
        return space.restrict(settings), space.planned(assignment)

    restricted, planned = both({"cat"})
    wide = restricted.tensors
    narrower = {t for t, spec in planned.tensors.items() if spec.scale.max() < wide[t].scale.max()}
    assert {"s0", "a", "b"} <= narrower, narrower
    restricted, planned = both({"silu0", "cat"})
    assert restricted.precision_of("split") is Precision.INT8
    assert planned.precision_of("split") is Precision.FP32


@pytest.mark.parametrize(("samples", "cores", "sizes"), [
    (96, 2, [24] * 4), (64, 2, [32, 32]), (16, 2, [8, 8]), (16, 4, [4] * 4), (3, 4, [1, 1, 1]),
    (100, 4, [25] * 4), (130, 4, [17] * 7 + [11]), (1, 2, [1])])
def test_held_out_samples_split_into_batches_every_core_can_take(
        samples: int, cores: int, sizes: list[int], monkeypatch: pytest.MonkeyPatch) -> None:
    from dsqc.autoprec import switch_model
    monkeypatch.setattr(switch_model, "workers", lambda: cores)
    data = SampleSet({"x": np.arange(samples, dtype=np.float32).reshape(samples, 1)}, "test")
    batches = switch_model.even_batches(data)
    assert [len(b["x"]) for b in batches] == sizes
    assert np.concatenate([b["x"] for b in batches]).ravel().tolist() == list(range(samples))
