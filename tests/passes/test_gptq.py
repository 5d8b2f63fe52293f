"""GPTQ on QDQ models: int4 blockwise and int8 per-channel MatMul weights beat round-to-nearest on
held-out correlated inputs, in ORT, on the plan's grid."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _rounding_models import mlp, mlp_samples, output_sqnr, scales, weight_ints

from dsqc.backends.onnx.profile import ONNX_PROFILE
from dsqc.ir import Model
from dsqc.passes import GPTQ
from dsqc.passes.gptq import gptq_rows
from dsqc.quant.boosters import BoosterOptions
from dsqc.quant.quantize import quantize_model
from dsqc.quant.recipe import Recipe
from dsqc.quant.rounding import RoundingOptions, learn_rounding

RECIPES = {"int4": Recipe(weight_dtype="int4", block_size=16), "int8": Recipe(weight_limit=15)}


@pytest.mark.parametrize("weights", sorted(RECIPES))
def test_beats_nearest_on_held_out_data(weights: str) -> None:
    fp32, calib, held = mlp(), mlp_samples(96, seed=1), mlp_samples(64, seed=2)
    quantized = quantize_model(fp32, ONNX_PROFILE, RECIPES[weights], calib)
    learned = learn_rounding(fp32, quantized.model, quantized.plan, calib, RoundingOptions(gptq=True))
    before, after = output_sqnr(fp32, quantized.model, held), output_sqnr(fp32, learned, held)
    assert after > before + 2.0, (before, after)
    onnx.checker.check_model(learned, full_check=True)
    assert all(np.array_equal(scales(learned)[k], v) for k, v in scales(quantized.model).items())
    old, new = weight_ints(quantized.model), weight_ints(learned)
    assert old.keys() == new.keys() and len(new) == 2
    top = 7 if weights == "int4" else 15
    assert all(int(np.abs(q).max()) <= top for q in new.values())
    assert all(np.count_nonzero(new[k] != old[k]) > 0 for k in old)
    assert "dsqc.gptq" in {p.key for p in learned.metadata_props}


def test_act_order_and_identity_hessian() -> None:
    """With H = I the columns are independent: GPTQ is round-to-nearest exactly (in any order)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((6, 40))
    scale = np.full(w.shape, 0.3)
    zero = np.zeros(w.shape, np.int64)
    nearest = np.clip(np.rint(w / scale), -7, 7)
    for act_order in (False, True):
        q = gptq_rows(w, np.eye(40), scale, zero, -7, 7, block=16, damp=0.0, act_order=act_order)
        assert np.array_equal(q, nearest)
    x = rng.standard_normal((200, 4)) @ rng.standard_normal((4, 40))  # rank 4: strongly correlated
    h = 2 * x.T @ x / len(x)
    for act_order in (False, True):
        q = gptq_rows(w, h, scale, zero, -7, 7, block=16, act_order=act_order)
        assert np.abs(q).max() <= 7
        err = [np.einsum("ij,jk,ik->", d, h, d) for d in (w - q * scale, w - nearest * scale)]
        assert err[0] < 0.5 * err[1]


def test_skips_mismatched_weights_and_hessians() -> None:
    fp32, calib = mlp(), mlp_samples(16, seed=3)
    quantized = quantize_model(fp32, ONNX_PROFILE, Recipe(), calib)
    model = Model.from_proto(quantized.model)
    wrong = np.zeros((3, 3), np.float32)
    gptq = GPTQ({"mm1": wrong, "mm2": np.zeros((96, 32), np.float32)}, {"mm1": np.eye(64), "mm2": np.eye(5)})
    assert not gptq(model).modified and not gptq.results


def test_recipe_keys() -> None:
    options = BoosterOptions.from_dict({"gptq": True, "gptq_act_order": True})
    assert options.rounding == RoundingOptions(gptq=True, act_order=True)
