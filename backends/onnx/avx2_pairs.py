"""ORT's x86 u8s8 kernels without VNNI, and how wide each output channel's int8 weights can go there.

On AVX2 without VNNI, ONNX Runtime's fused QLinearConv, QGemm and int8 MatMul multiply uint8 activation
codes by int8 weights with ``vpmaddubsw``: the two products of each pair of neighbouring reduction
indices ``(2j, 2j + 1)`` are added in an int16 that **saturates**, and the pairs are then summed in int32
(the activation zero point is subtracted afterwards, from the column sums of the weights). The reduction
index runs over ``(kh, kw, c)`` within each group of a Conv (ORT runs them channels-last) and over ``K``
for Gemm/MatMul; an odd ``K`` is padded with a zero. Depthwise convs (one input and one output channel
per group) accumulate in int32 and never saturate. A brute-force model of exactly this matches ORT 1.32's
fused output bit for bit on an AMD EPYC without VNNI (``tests/backends/onnx/test_avx2_pairs.py``).

Weights in [-64, 64] never saturate (255 · 128 < 32767); in [-127, 127] they can. ``safe_limits`` gives
each output channel the widest limit ``L`` (weights in [-L, L], scale ``max|w| / L``) whose every pair
sum stays inside int16 for any input codes within each reduction index's range.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

INT16_MIN, INT16_MAX = -32768, 32767
SAFE_LIMIT = 64  # 255 · (64 + 64) = 32640: no pair of products can saturate
FULL_LIMIT = 127
CANDIDATES = (64, 72, 80, 88, 96, 104, 112, 120, FULL_LIMIT)


def conv_weight_rows(weight: np.ndarray, group: int) -> list[np.ndarray]:
    """Per group, the ``(out channels, K)`` weight rows in ORT's ``(kh, kw, c)`` reduction order."""
    per_group = weight.shape[0] // group
    return [weight[g * per_group:(g + 1) * per_group].transpose(0, 2, 3, 1).reshape(per_group, -1)
            for g in range(group)]


def conv_index_ranges(low: np.ndarray, high: np.ndarray, weight_shape: tuple[int, ...],
                      group: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """Per group, the code range of each ``(kh, kw, c)`` reduction index from each input channel's."""
    taps = int(weight_shape[2]) * int(weight_shape[3])
    per_group = len(low) // group
    return [(np.tile(low[g * per_group:(g + 1) * per_group], taps),
             np.tile(high[g * per_group:(g + 1) * per_group], taps)) for g in range(group)]


def safe_limits(ranges: Sequence[tuple[np.ndarray, np.ndarray]], rows: Sequence[np.ndarray],
                candidates: Sequence[int] = CANDIDATES) -> np.ndarray:
    """Per output channel (groups in order), the widest candidate limit whose int16 pair sums cannot
    saturate for any codes with index ``k`` in ``[low[k], high[k]]``.

    ``ranges[g]``: ``(low, high)`` uint8 codes per reduction index of group ``g``; ``rows[g]``: its
    ``(out, K)`` float weights."""
    limits = []
    for (low, high), w in zip(ranges, rows, strict=True):
        lo, hi, w = low.astype(np.float64), high.astype(np.float64), w.astype(np.float64)
        if len(lo) % 2:
            lo, hi, w = np.append(lo, 0.0), np.append(hi, 0.0), np.hstack([w, np.zeros((len(w), 1))])
        amax = np.abs(w).max(axis=1)
        best = np.full(len(w), candidates[0], np.int64)
        for limit in candidates:
            scale = np.where(amax > 0, amax / limit, 1.0)
            q = np.clip(np.round(w / scale[:, None]), -limit, limit)
            top, bottom = np.where(q > 0, q * hi, q * lo), np.where(q > 0, q * lo, q * hi)
            fits = ((top[:, 0::2] + top[:, 1::2]).max(axis=1) <= INT16_MAX) & \
                ((bottom[:, 0::2] + bottom[:, 1::2]).min(axis=1) >= INT16_MIN)
            best = np.where(fits, limit, best)
        limits.append(best)
    return np.concatenate(limits)
