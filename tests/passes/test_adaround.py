"""AdaRound on QDQ models: learned rounding beats round-to-nearest on held-out data, in ORT, and keeps
the plan's scales and integer ranges."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _rounding_models import cnn, cnn_samples, output_sqnr, scales, weight_ints

from dsqc.backends.onnx.profile import ONNX_PROFILE
from dsqc.errors import RecipeError
from dsqc.ir import Model
from dsqc.passes import AdaRound
from dsqc.passes.adaround import LayerInputs
from dsqc.quant.boosters import BoosterOptions
from dsqc.quant.quantize import quantize_model
from dsqc.quant.recipe import Recipe
from dsqc.quant.rounding import RoundingOptions, learn_rounding

LIMIT = 7  # 4-bit weights in int8 storage: where round-to-nearest hurts


@pytest.fixture(scope="module")
def rounded() -> tuple[onnx.ModelProto, onnx.ModelProto, onnx.ModelProto]:
    fp32 = cnn()
    calib = cnn_samples(128, seed=1)
    quantized = quantize_model(fp32, ONNX_PROFILE, Recipe(weight_limit=LIMIT), calib)
    learned = learn_rounding(fp32, quantized.model, quantized.plan, calib,
                             RoundingOptions(adaround=True, iterations=150))
    return fp32, quantized.model, learned


def test_beats_nearest_on_held_out_data(rounded: tuple[onnx.ModelProto, ...]) -> None:
    fp32, nearest, learned = rounded
    held = cnn_samples(64, seed=2)
    before, after = output_sqnr(fp32, nearest, held), output_sqnr(fp32, learned, held)
    assert after > before + 1.0, (before, after)


def test_keeps_scales_and_ranges(rounded: tuple[onnx.ModelProto, ...]) -> None:
    _, nearest, learned = rounded
    onnx.checker.check_model(learned, full_check=True)
    assert scales(learned).keys() == scales(nearest).keys()
    assert all(np.array_equal(scales(learned)[k], v) for k, v in scales(nearest).items())
    old, new = weight_ints(nearest), weight_ints(learned)
    assert old.keys() == new.keys() and len(new) == 3
    assert all(int(np.abs(q).max()) <= LIMIT for q in new.values())
    flipped = [int(np.count_nonzero(new[k] != old[k])) for k in old]
    assert sum(f > 0 for f in flipped) >= 2, flipped
    # a flip moves a weight by one step: floor or ceil of W / s, never further
    assert all(int(np.abs(new[k] - old[k]).max()) <= 1 for k in old)
    assert "dsqc.adaround" in {p.key for p in learned.metadata_props}


def test_pass_keeps_nearest_when_it_cannot_improve() -> None:
    """A layer whose FP32 weights sit on the grid already: nothing to learn, nothing changes."""
    fp32 = cnn()
    calib = cnn_samples(16, seed=3)
    quantized = quantize_model(fp32, ONNX_PROFILE, Recipe(), calib)
    model = Model.from_proto(quantized.model)
    conv = next(n for n in model.graph.nodes if n.name == "conv1")
    dq = conv.inputs[1].inputs[0]
    on_grid = (np.asarray(dq.inputs[0].values, np.float32)
               * np.asarray(dq.inputs[1].values, np.float32).reshape(-1, 1, 1, 1))
    x = calib.feeds["x"]
    result = AdaRound({"conv1": on_grid}, {"conv1": LayerInputs(x, x)}, iterations=20)(model)
    assert not result.modified


def test_recipe_keys() -> None:
    options = BoosterOptions.from_dict({"adaround": True, "adaround_iterations": 50})
    assert options.rounding == RoundingOptions(adaround=True, iterations=50)
    assert BoosterOptions.from_dict({}).rounding is None
    with pytest.raises(RecipeError, match="adaround_iterations"):
        BoosterOptions.from_dict({"adaround_iterations": 0})
    with pytest.raises(RecipeError, match=r"boosters\.adaround must be true or false"):
        BoosterOptions.from_dict({"adaround": "yes"})
    with pytest.raises(RecipeError, match=r"unknown key 'boosters\.adarond'.*adaround"):
        BoosterOptions.from_dict({"adarond": True})


@pytest.mark.parametrize("op,attrs,w_shape", [
    ("Conv", {"pads": [1, 0, 2, 1], "strides": [2, 1], "dilations": [1, 2], "group": 2}, (6, 2, 3, 3)),
    ("ConvTranspose", {"pads": [1, 1, 1, 1], "strides": [2, 2], "output_padding": [1, 1]}, (4, 3, 3, 3)),
    ("Gemm", {"transB": 1, "alpha": 0.5}, (5, 4)),
])
def test_layer_forward_matches_ort(op: str, attrs: dict, w_shape: tuple[int, ...]) -> None:
    """The torch function AdaRound optimises is the ONNX layer (without its bias), checked against ORT."""
    import torch
    from _graphs import init, make_model, randn, run, value
    from onnx import helper

    from dsqc.passes.adaround import _forward

    x_shape = (2, 4) if op == "Gemm" else (2, 4, 7, 6)
    w, x = randn(w_shape, seed=1), randn(x_shape, seed=2)
    node = helper.make_node(op, ["x", "w"], ["y"], name="layer", **attrs)
    proto = make_model([node], [value("x", x_shape)], [value("y", None)], [init("w", w)])
    expected = run(proto, {"x": x})[0]
    forward = _forward(Model.from_proto(proto).graph.nodes[0], len(w_shape))
    assert not isinstance(forward, str), forward
    got = forward(torch.from_numpy(x), torch.from_numpy(w)).numpy()
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_bias_correction_leaves_learned_layers_alone(rounded: tuple[onnx.ModelProto, ...]) -> None:
    """AdaRound fitted each layer's whole output error, its mean included: ΔW · E[x] would undo part of
    it (MNIST CNN at ±7: 29.96 dB without, 28.18 dB with a second correction)."""
    from dsqc.quant.boosters import correct_biases
    from dsqc.quant.rounding import ROUNDED_MARK

    fp32, _, learned = rounded
    marked = {p.value for p in learned.metadata_props if p.key == ROUNDED_MARK}
    layers = set(next(iter(marked)).splitlines()) if marked else set()
    assert {"conv2", "fc"} <= layers
    corrected = correct_biases(fp32, learned, cnn_samples(32, seed=1))
    biases = {t.name: onnx.numpy_helper.to_array(t) for t in corrected.graph.initializer if t.data_type == 6}
    before = {t.name: onnx.numpy_helper.to_array(t) for t in learned.graph.initializer if t.data_type == 6}
    changed = {k for k in before if not np.array_equal(before[k], biases.get(k))}
    assert not any(name.startswith(("b2", "b3")) for name in changed), changed
