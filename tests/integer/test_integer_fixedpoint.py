"""The one rounding rule: multipliers, half-to-even shifts, saturation."""

from __future__ import annotations

import math

import numpy as np
import pytest

from dsqc.errors import UnsupportedError
from dsqc.integer.fixedpoint import (
    common_multipliers,
    mult_bits,
    quantize_multiplier,
    requantize,
    round_shift,
)


def test_multiplier_has_31_significant_bits() -> None:
    rng = np.random.default_rng(0)
    for real in np.exp(rng.uniform(math.log(1e-7), math.log(1e3), 500)):
        mult = quantize_multiplier(float(real))
        assert 2**30 <= mult.m < 2**31 or mult.shift_only
        assert 0 <= mult.n <= 62
        assert abs(mult.real - real) / real < 2.0**-30


@pytest.mark.parametrize(("real", "m", "n"), [(1.0, 1, 0), (0.25, 1, 2), (2.0**-20, 1, 20), (8.0, 8, 0)])
def test_power_of_two_is_shift_only(real: float, m: int, n: int) -> None:
    mult = quantize_multiplier(real)
    assert (mult.m, mult.n) == (m, n) and mult.shift_only


@pytest.mark.parametrize("real", [0.0, -1.0, float("inf"), 2.0**32])
def test_bad_multiplier_is_unsupported(real: float) -> None:
    with pytest.raises(UnsupportedError):
        quantize_multiplier(real, "node 'x'")


def test_round_shift_is_half_to_even_like_onnx() -> None:
    rng = np.random.default_rng(1)
    p = rng.integers(-(2**40), 2**40, 50_000)
    n = rng.integers(0, 16, 50_000)
    assert np.array_equal(round_shift(p, n), np.rint(p / 2.0**n).astype(np.int64))
    assert round_shift(np.array([-5, -3, -1, 1, 3, 5]), 1).tolist() == [-2, -2, 0, 0, 2, 2]


def test_requantize_saturates_after_zero_point() -> None:
    out = requantize(np.array([-10**6, 0, 3, 10**6]), 1, 1, -128, -128, 127)
    assert out.tolist() == [-128, -128, -126, 127]


def test_common_multipliers_share_one_shift() -> None:
    (ma, mb), n = common_multipliers([0.75, 0.001])
    assert ma < 2**31 <= 2 * ma
    assert abs(ma / 2**n - 0.75) < 2.0**-30 and abs(mb / 2**n - 0.001) < 2.0**-30


def test_wide_accumulators_get_multipliers_that_keep_the_product_in_int64() -> None:
    """int16 activations: |acc| up to 2^40 takes a 21-bit multiplier, and requantize stays the exact
    round-half-even of acc·m / 2^n (Python integers) with no int64 overflow."""
    assert mult_bits(2**31 - 1) == 31 and mult_bits(2**36) == 25 and mult_bits(2**40) == 21
    rng = np.random.default_rng(0)
    bound = 2**40
    for real in rng.uniform(1e-9, 0.9, 50):
        mult = quantize_multiplier(float(real), bits=mult_bits(bound))
        assert mult.m < 2**21 and abs(mult.real - real) / real < 2.0**-19
        acc = rng.integers(-bound, bound, 200, dtype=np.int64)
        got = requantize(acc, mult.m, mult.n, 0, -(2**62), 2**62)
        for a, g in zip(acc.tolist(), got.tolist(), strict=True):
            num, den = a * mult.m, 2**mult.n
            q, r = divmod(num, den)
            exact = q + (1 if 2 * r > den or (2 * r == den and q % 2) else 0)
            assert g == exact
