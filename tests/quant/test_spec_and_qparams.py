"""QuantSpec validation and quantization arithmetic."""

from __future__ import annotations

import numpy as np
import pytest

from dsqc.quant.qparams import activation_spec, bias_spec, dequantize, fit_bias, quantize, weight_spec
from dsqc.quant.spec import QuantSpec


def test_spec_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="positive"):
        QuantSpec("int8", np.float32(-1.0), np.int64(0))
    with pytest.raises(ValueError, match="zero point"):
        QuantSpec("uint8", np.float32(0.1), np.int64(300))
    with pytest.raises(ValueError, match="per-channel"):
        QuantSpec("int8", np.float32(0.1), np.int64(0), axis=0)
    with pytest.raises(ValueError, match="unknown"):
        QuantSpec("int7", np.float32(0.1), np.int64(0))


def test_asymmetric_activation_keeps_zero_exact() -> None:
    spec = activation_spec(0.0, 6.0, "uint8", symmetric=False)
    assert int(spec.zero_point) == 0
    assert quantize(np.array([0.0], np.float32), spec)[0] == 0
    lo, hi = spec.representable_range()
    assert lo == 0.0 and hi == pytest.approx(6.0, rel=1e-6)
    spec = activation_spec(-1.0, 3.0, "uint8", symmetric=False)
    assert dequantize(quantize(np.zeros(1, np.float32), spec), spec)[0] == 0.0


def test_symmetric_int8_activation() -> None:
    spec = activation_spec(-2.0, 1.0, "int8", symmetric=True)
    assert int(spec.zero_point) == 0 and float(spec.scale) == pytest.approx(2.0 / 127)


def test_weight_per_channel_axis_and_limit() -> None:
    w = np.random.default_rng(0).normal(size=(4, 3, 3, 3)).astype(np.float32)
    w[2] *= 10
    spec = weight_spec(w, axis=0)
    assert spec.scale.shape == (4,)
    q = quantize(w, spec)
    assert q.min() >= -127 and q.max() <= 127
    assert np.all(np.abs(q).reshape(4, -1).max(axis=1) == 127)
    reduced = weight_spec(w, axis=0, limit=64)
    assert np.abs(quantize(w, reduced)).max() == 64
    err = np.abs(dequantize(q, spec) - w).reshape(4, -1).max(axis=1)
    assert np.all(err <= spec.scale / 2 + 1e-6)


def test_int4_blockwise() -> None:
    w = np.random.default_rng(1).normal(size=(64, 8)).astype(np.float32)
    spec = weight_spec(w, axis=0, dtype="int4", block_size=32)
    assert spec.scale.shape == (2, 8)
    q = quantize(w, spec)
    assert q.min() >= -7 and q.max() <= 7
    assert np.abs(dequantize(q, spec) - w).max() <= float(spec.scale.max()) / 2 + 1e-6


def test_bias_scale_is_product() -> None:
    spec = bias_spec(np.float32(0.02), np.array([0.1, 0.2], np.float32))
    assert spec.dtype == "int32" and spec.axis == 0
    np.testing.assert_allclose(spec.scale, [0.002, 0.004], rtol=1e-6)


def test_dead_channel_bias_fits_int32_by_widening_its_weight_scale() -> None:
    """A BatchNorm-folded dead channel: weights ~1e-6, bias -6 (the real EfficientNet-Lite0 has them).
    Its int32 bias at s_in·s_w would be ~-2e10 and clip; the channel's weight scale widens instead."""
    weight = np.stack([np.full((1, 3, 3), 1e-6), np.linspace(-0.4, 0.4, 9).reshape(1, 3, 3)])
    weight = weight.astype(np.float32)
    bias = np.array([-6.07, 0.1], np.float32)
    x_scale = np.float32(2 / 255)
    w_spec = weight_spec(weight, 0, "int8")
    assert np.abs(bias[0]) / (x_scale * w_spec.scale[0]) > 2**31, "the plain spec overflows int32"
    fitted = fit_bias(w_spec, bias, x_scale)
    b_spec = bias_spec(x_scale, fitted.scale)
    assert np.abs(quantize(bias, b_spec)).max() <= 2**30
    restored = dequantize(quantize(bias, b_spec), b_spec)
    assert np.all(np.abs(restored - bias) <= b_spec.scale / 2 * (1 + 1e-6)), "within half a step"
    assert fitted.scale[1] == w_spec.scale[1], "a healthy channel keeps its scale"
    assert fit_bias(w_spec, np.zeros(2, np.float32), x_scale) is w_spec
    pow2 = fit_bias(weight_spec(weight, 0, "int8", power_of_two=True), bias, x_scale)
    assert np.all(np.exp2(np.round(np.log2(pow2.scale))) == pow2.scale), "pow2 plans stay pow2"
