"""Quantization parameters from ranges and weights; quantize/dequantize with ONNX's rounding rule."""

from __future__ import annotations

import dataclasses

import numpy as np

from dsqc.quant.spec import DTYPE_RANGES, QuantSpec

_TINY = np.float32(1e-12)


def activation_spec(lo: float, hi: float, dtype: str, symmetric: bool,
                    power_of_two: bool = False) -> QuantSpec:
    """Per-tensor spec covering [lo, hi] (widened to include 0 so that 0 is exact)."""
    lo, hi = min(float(lo), 0.0), max(float(hi), 0.0)
    qlo, qhi = DTYPE_RANGES[dtype]
    if symmetric:
        amax = max(-lo, hi)
        scale = _positive(amax / (qhi if qlo < 0 else qhi / 2.0))
        scale = _pow2(scale) if power_of_two else scale
        zero = 0 if qlo < 0 else (qlo + qhi + 1) // 2
        return QuantSpec(dtype, np.asarray(scale, np.float32), np.asarray(zero, np.int64))
    scale = _positive((hi - lo) / (qhi - qlo))
    scale = _pow2(scale) if power_of_two else scale
    zero = int(np.clip(np.rint(qlo - lo / scale), qlo, qhi))
    return QuantSpec(dtype, np.asarray(scale, np.float32), np.asarray(zero, np.int64))


def weight_spec(weight: np.ndarray, axis: int | None, dtype: str = "int8",
                block_size: int | None = None, power_of_two: bool = False,
                limit: int | np.ndarray | None = None) -> QuantSpec:
    """Symmetric narrow-range spec: per tensor, per channel on ``axis``, or blockwise along ``axis``.

    ``limit`` caps the integer range to [-limit, limit] (e.g. 64: 7-bit weights); per channel, an array
    along ``axis`` (the spec's ``limit`` is then the widest).
    """
    top = DTYPE_RANGES[dtype][1]
    qmax = np.minimum(top, limit if limit is not None else top)
    w = np.abs(weight.astype(np.float64))
    amax: np.ndarray
    if axis is None:
        amax = np.asarray(w.max(initial=0.0))
    elif block_size:
        amax = _block_absmax(w, axis, block_size)
    else:
        amax = w.max(axis=tuple(i for i in range(w.ndim) if i != axis % w.ndim), initial=0.0)
    scale = np.where(amax > 0, amax / qmax, 1.0).astype(np.float32)
    scale = np.maximum(scale, _TINY)
    if power_of_two:
        scale = np.exp2(np.ceil(np.log2(scale))).astype(np.float32)
    zero = np.zeros(scale.shape, dtype=np.int64)
    widest = None if limit is None else int(np.max(limit))
    return QuantSpec(dtype, scale, zero, axis=None if axis is None else axis % weight.ndim,
                     block_size=block_size or None, narrow=True, limit=widest)


BIAS_LIMIT = float(2**30)  # |quantized bias| bound: half the int32 range, the rest for Σ x·w


def fit_bias(w_spec: QuantSpec, bias: np.ndarray, input_scale: np.ndarray) -> QuantSpec:
    """``w_spec`` with its scale raised where the int32 bias (scale s_in · s_w) would not fit.

    A channel whose weights are all but zero (a dead channel after BatchNorm folding) gets a tiny weight
    scale, so its bias in units of s_in · s_w overflows int32 and is clipped: the real EfficientNet-Lite0's
    first depthwise conv lost its output to 15 dB that way. Such channels' weights are ~0 anyway, so a
    coarser weight scale costs nothing there.
    """
    need = np.abs(bias.astype(np.float64)) / (float(input_scale) * BIAS_LIMIT)
    scale = w_spec.scale.astype(np.float64)
    widened = np.maximum(scale, need if w_spec.axis is not None else need.max(initial=0.0))
    if np.array_equal(widened, scale):
        return w_spec
    if _is_pow2(scale):
        widened = np.exp2(np.ceil(np.log2(widened)))
    return dataclasses.replace(w_spec, scale=widened.astype(np.float32))


def _is_pow2(scale: np.ndarray) -> bool:
    return bool(np.all(np.exp2(np.round(np.log2(scale))) == scale))


def bias_spec(input_scale: np.ndarray, weight_scale: np.ndarray) -> QuantSpec:
    """int32 bias with scale s_in · s_w (per output channel), zero point 0."""
    scale = (np.float32(input_scale) * weight_scale.astype(np.float32)).astype(np.float32)
    scale = np.maximum(scale, _TINY)
    axis = 0 if scale.ndim == 1 else None
    return QuantSpec("int32", scale, np.zeros(scale.shape, dtype=np.int64), axis=axis)


def expand(values: np.ndarray, spec: QuantSpec, shape: tuple[int, ...]) -> np.ndarray:
    """Broadcast a spec's scale or zero point to a tensor of ``shape``."""
    if spec.axis is None:
        return values
    axis = spec.axis
    if spec.block_size:
        return np.repeat(values, spec.block_size, axis=axis).take(range(shape[axis]), axis=axis)
    view = [1] * len(shape)
    view[axis] = shape[axis]
    return values.reshape(view)


def quantize(x: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """ONNX QuantizeLinear: round half to even, add zero point, saturate (narrow range for weights)."""
    scale = expand(spec.scale, spec, x.shape).astype(np.float32)
    zero = expand(spec.zero_point, spec, x.shape)
    q = np.rint(x.astype(np.float32) / scale) + zero
    return np.clip(q, spec.qmin, spec.qmax).astype(np.int64)


def dequantize(q: np.ndarray, spec: QuantSpec) -> np.ndarray:
    scale = expand(spec.scale, spec, q.shape).astype(np.float32)
    zero = expand(spec.zero_point, spec, q.shape)
    return ((q.astype(np.int64) - zero).astype(np.float32) * scale).astype(np.float32)


def _block_absmax(w: np.ndarray, axis: int, block: int) -> np.ndarray:
    axis = axis % w.ndim
    size = w.shape[axis]
    blocks = -(-size // block)
    pad = [(0, 0)] * w.ndim
    pad[axis] = (0, blocks * block - size)
    padded = np.pad(w, pad)
    shape = (*padded.shape[:axis], blocks, block, *padded.shape[axis + 1:])
    return padded.reshape(shape).max(axis=axis + 1)


def _positive(value: float) -> float:
    return value if value > 0 and np.isfinite(value) else 1.0


def _pow2(scale: float) -> float:
    return float(2.0 ** np.ceil(np.log2(scale)))
