"""Fixed-point requantization: dsqc's one rounding rule, shared by the reference and generated code.

A real multiplier ``M > 0`` is stored as an integer pair ``(m, n)`` with ``M ≈ m · 2^-n``. Applying it to
an integer ``acc`` is, in 64-bit arithmetic with ``>>`` an arithmetic (flooring) shift,

    p = acc · m
    round_shift(p, n) = (p + 2^(n-1) − 1 + ((p >> n) & 1)) >> n      (n ≥ 1)
    round_shift(p, 0) = p

which is **round half to even** of ``p / 2^n`` — the rule of ONNX QuantizeLinear. Whenever ``M`` is
exact (power-of-two scales, pooling windows of 2^k, equal scales) the integer program therefore
reproduces the QDQ model bit for bit; otherwise only ``m``'s 31-bit approximation of ``M`` differs.
The result is offset by the output zero point and saturated to the output range. gcc, clang and
Vitis HLS shift signed values arithmetically (C99 leaves it implementation-defined).

``m`` is normalized to [2^30, 2^31) — 31 significant bits — unless ``M`` is an exact power of two:
then ``m`` is itself a power of two (usually 1) and the requantization is a shift only. Where ``acc`` can
exceed 31 bits (int16 activations), ``m`` gets fewer bits (``mult_bits``) so that ``acc · m`` stays
inside int64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dsqc.errors import UnsupportedError

MAX_SHIFT = 62
MULT_BITS = 31
ROUNDING_RULE = ("round half to even: p = acc*m (64-bit), (p + (1 << (n-1)) - 1 + ((p >> n) & 1)) >> n "
                 "with an arithmetic right shift, then + zero point and saturation")


@dataclass(frozen=True)
class Multiplier:
    """``M ≈ m · 2^-n``. ``m`` is a power of two (shift-only) when ``M`` is one."""

    m: int
    n: int

    @property
    def real(self) -> float:
        return self.m / float(2**self.n)

    @property
    def shift_only(self) -> bool:
        return self.m & (self.m - 1) == 0


def mult_bits(acc_bound: int) -> int:
    """Significant bits of ``m`` for values up to ``acc_bound`` in magnitude: ``|acc · m| < 2^62``."""
    return max(8, min(MULT_BITS, 62 - int(acc_bound).bit_length()))


def quantize_multiplier(real: float, what: str = "multiplier", bits: int = MULT_BITS) -> Multiplier:
    """Integer multiplier and right shift for ``real`` (> 0), ``m`` of ``bits`` significant bits. Exact
    powers of two become shift-only."""
    if not math.isfinite(real) or real <= 0.0:
        raise UnsupportedError(f"{what}: requantization multiplier {real!r} is not positive and finite")
    frac, exp = math.frexp(real)  # real = frac * 2^exp, frac in [0.5, 1)
    if frac == 0.5:
        k = exp - 1  # real == 2^k
        return Multiplier(1, -k) if k <= 0 and -k <= MAX_SHIFT else _pow2_large(k, what)
    m = round(frac * 2**bits)
    n = bits - exp
    if m == 2**bits:
        m, n = m // 2, n - 1
    if n < 0:
        raise UnsupportedError(f"{what}: requantization multiplier {real:.4g} exceeds 2^31")
    if n > MAX_SHIFT:
        m, n = max(1, round(real * 2.0**MAX_SHIFT)), MAX_SHIFT
    return Multiplier(int(m), int(n))


def _pow2_large(k: int, what: str) -> Multiplier:
    if k > 30:
        raise UnsupportedError(f"{what}: requantization multiplier 2^{k} exceeds 2^30")
    if k > 0:
        return Multiplier(2**k, 0)
    return Multiplier(1, MAX_SHIFT)  # 2^k with k < -62: every int32 rounds to 0 or ±1 anyway


def common_multipliers(reals: list[float], what: str = "add") -> tuple[list[int], int]:
    """Integer multipliers sharing one shift ``n`` (``reals[i] ≈ m[i] · 2^-n``), largest < 2^31."""
    top = max(reals)
    if not all(math.isfinite(r) and r > 0 for r in reals):
        raise UnsupportedError(f"{what}: scale ratios {reals} are not positive and finite")
    _, exp = math.frexp(top)
    n = min(MULT_BITS - exp, MAX_SHIFT)
    if n < 0:
        raise UnsupportedError(f"{what}: scale ratio {top:.4g} exceeds 2^31")
    ms = [round(r * 2.0**n) for r in reals]
    if max(ms) >= 2**MULT_BITS:
        n -= 1
        ms = [round(r * 2.0**n) for r in reals]
    return [int(m) for m in ms], int(n)


def round_shift(p: np.ndarray, n: np.ndarray | int) -> np.ndarray:
    """``p / 2^n`` rounded half to even (``p`` where ``n == 0``), elementwise in int64."""
    p = np.asarray(p, dtype=np.int64)
    n = np.asarray(n, dtype=np.int64)
    half = np.where(n > 0, np.left_shift(np.int64(1), np.maximum(n - 1, 0)), 0)
    odd = np.where(n > 0, np.right_shift(p, n) & 1, 0)
    return np.right_shift(p + half - (n > 0) + odd, n)


def requantize(acc: np.ndarray, m: np.ndarray | int, n: np.ndarray | int, zero_point: int,
               qmin: int, qmax: int) -> np.ndarray:
    """The rule in numpy: ``clamp(zp + round_shift(acc · m, n), qmin, qmax)`` as int64."""
    p = np.asarray(acc, dtype=np.int64) * np.asarray(m, dtype=np.int64)
    return np.clip(round_shift(p, n) + zero_point, qmin, qmax)


def isqrt(value: np.ndarray) -> np.ndarray:
    """Floor square root of non-negative int64 values below 2^62, exactly (float64's estimate corrected)."""
    v = np.asarray(value, dtype=np.int64)
    r = np.floor(np.sqrt(v.astype(np.float64))).astype(np.int64)
    for _ in range(4):  # the float estimate is off by at most one or two
        r = np.where(r * r > v, r - 1, r)
        r = np.where((r + 1) * (r + 1) <= v, r + 1, r)
    return r


def round_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` (``den`` > 0) rounded half away from zero, in int64: C's truncating ``/`` on the
    magnitude, the sign put back."""
    num = np.asarray(num, dtype=np.int64)
    den = np.asarray(den, dtype=np.int64)
    magnitude = (np.abs(num) + den // 2) // den
    return np.where(num < 0, -magnitude, magnitude)
