"""``dsqc.quant.boosters``: options from a recipe table, FP32-side boosters keep the function, bias
correction after Q/DQ; ``channel_stats`` matches numpy whatever the batch size."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.backends.onnx.profile import ONNX_PROFILE
from dsqc.calibration.channel_stats import channel_stats
from dsqc.calibration.data import SampleSet
from dsqc.errors import RecipeError
from dsqc.metrics import sqnr_db
from dsqc.quant.boosters import BoosterOptions, apply_boosters, correct_biases
from dsqc.quant.quantize import quantize_model
from dsqc.quant.recipe import Recipe
from dsqc.verify import run_batches, session


def cnn_then_transformer() -> onnx.ModelProto:
    """x[N,4,8,8] → Conv → Relu → Conv → Flatten → LayerNorm → MatMul → y: one CLE chain, one SmoothQuant."""
    rng = np.random.default_rng(0)
    spread = np.logspace(-1, 1, 8).astype(np.float32).reshape(8, 1, 1, 1)
    inits = {"w1": rng.normal(0, 0.3, (8, 4, 3, 3)).astype(np.float32) * spread,
             "b1": rng.normal(0, 0.1, 8).astype(np.float32),
             "w2": rng.normal(0, 0.3, (2, 8, 3, 3)).astype(np.float32),
             "b2": rng.normal(0, 0.1, 2).astype(np.float32),
             "gamma": np.where(np.arange(128) % 31 == 0, 20.0, 1.0).astype(np.float32),
             "beta": rng.normal(0, 0.1, 128).astype(np.float32),
             "wm": rng.normal(0, 0.2, (128, 16)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4),
             helper.make_node("Flatten", ["c2"], ["f"], name="flatten"),
             helper.make_node("LayerNormalization", ["f", "gamma", "beta"], ["h"], name="ln", axis=-1),
             helper.make_node("MatMul", ["h", "wm"], ["y"], name="proj")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    graph = helper.make_graph(nodes, "g", [x],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
                              [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def samples(seed: int, n: int = 32) -> SampleSet:
    return SampleSet({"x": np.random.default_rng(seed).normal(size=(n, 4, 8, 8)).astype(np.float32)}, "test")


def test_options_from_recipe_table() -> None:
    assert BoosterOptions.from_dict({}) == BoosterOptions()
    opts = BoosterOptions.from_dict({"cle": True, "smoothquant": 0.7, "bias_correction": True})
    assert opts == BoosterOptions(True, 0.7, True) and opts.fp32_side
    assert BoosterOptions.from_dict({"smoothquant": True}).smoothquant == 0.5
    assert BoosterOptions.from_dict({"smoothquant": False}).smoothquant is None
    assert BoosterOptions.from_dict({}).resolved(True).shift is True  # on for symmetric activations (trt)
    assert BoosterOptions.from_dict({}).resolved(False).shift is False
    assert BoosterOptions.from_dict({"shift": False}).resolved(True).shift is False
    assert BoosterOptions.from_dict({"shift": True}).resolved(False).fp32_side
    for bad, needle in (({"cle": 1}, "boosters.cle"), ({"smoothquant": 2.0}, "smoothquant"),
                        ({"shift": 1}, "boosters.shift"),
                        ({"bias": True}, "boosters.bias")):
        with pytest.raises(RecipeError, match=needle):
            BoosterOptions.from_dict(bad)


def test_fp32_boosters_keep_the_function() -> None:
    model, calib = cnn_then_transformer(), samples(1)
    boosted = apply_boosters(model, calib, BoosterOptions(cle=True, smoothquant=0.5, shift=True))
    changed = {t.name for t in boosted.graph.initializer} != {t.name for t in model.graph.initializer} or any(
        not np.array_equal(numpy_helper.to_array(a), numpy_helper.to_array(b))
        for a, b in zip(model.graph.initializer, boosted.graph.initializer, strict=False))
    assert changed
    feeds = [dict(samples(2).feeds)]
    ref, got = (run_batches(session(m, optimize=False), feeds)["y"] for m in (model, boosted))
    assert sqnr_db(ref, got) > 100  # equal up to float rounding
    assert apply_boosters(model, calib, BoosterOptions()) is model


def test_boosters_then_quantize_and_correct() -> None:
    model, calib = cnn_then_transformer(), samples(1, 64)
    recipe = Recipe(method="minmax", per_channel=False)
    held = [dict(samples(3).feeds)]
    ref = run_batches(session(model), held)["y"]

    def build(options: BoosterOptions) -> float:
        boosted = apply_boosters(model, calib, options)
        qdq = quantize_model(boosted, ONNX_PROFILE, recipe, calib).model
        if options.bias_correction:
            qdq = correct_biases(boosted, qdq, calib)
        return sqnr_db(ref, run_batches(session(qdq), held)["y"])

    plain = build(BoosterOptions())
    assert build(BoosterOptions(cle=True, smoothquant=0.5, bias_correction=True)) > plain + 3


@pytest.mark.parametrize("batch", [1, 5, 32])
def test_channel_stats_match_numpy(batch: int) -> None:
    model, calib = cnn_then_transformer(), samples(4, 20)
    stats = channel_stats(model, {"x": 1, "c1": 1, "h": -1}, calib, batch_size=batch)
    ref = run_batches(session(_with_outputs(model, ["c1", "h"]), optimize=False), [dict(calib.feeds)])
    x = calib.feeds["x"]
    np.testing.assert_allclose(stats["x"].absmax, np.abs(x).max(axis=(0, 2, 3)), rtol=1e-6)
    np.testing.assert_allclose(stats["x"].mean, x.mean(axis=(0, 2, 3)), rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(stats["c1"].mean, ref["c1"].mean(axis=(0, 2, 3)), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(stats["h"].absmax, np.abs(ref["h"]).max(axis=0), rtol=1e-6)
    assert stats["c1"].count == 20 * 64


def _with_outputs(model: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(model)
    del out.graph.output[:]
    out.graph.output.extend(helper.make_tensor_value_info(n, TensorProto.FLOAT, None) for n in names)
    return out
