"""Clipping thresholds chosen from a :class:`GridHistogram` (percentile, KL entropy, MSE).

Each function returns ``T >= 0``; observers turn it into the range ``(max(min, -T), min(max, T))``.
All searches are vectorized over the candidate thresholds: one tensor costs a few milliseconds.
"""

from __future__ import annotations

import numpy as np

from dsqc.calibration.histogram import GridHistogram

_EPS = 1e-4  # count given to an empty quantized bin that must hold mass (TensorRT/MXNet smoothing)
KL_MIN_KEPT = 99.0  # entropy never clips more than 1 % of |x| (see entropy_threshold)


def _used_abs_bins(hist: GridHistogram) -> tuple[np.ndarray, int]:
    """``|x|`` counts up to the bin holding ``max|x|`` and that number of bins."""
    h = hist.abs_counts()
    amax = max(-hist.min, hist.max)
    n = min(h.size, int(amax / hist.width) + 1)
    return h[:n], n


def percentile_threshold(hist: GridHistogram, percentile: float) -> float:
    """The ``percentile`` of ``|x|``, linearly interpolated inside its bin."""
    amax = max(-hist.min, hist.max)
    if hist.k is None or percentile >= 100.0:
        return amax
    h, _ = _used_abs_bins(hist)
    cum = np.cumsum(h)
    target = percentile / 100.0 * float(cum[-1])
    b = int(np.searchsorted(cum, target, side="left"))
    below = float(cum[b - 1]) if b > 0 else 0.0
    frac = (target - below) / float(h[b]) if h[b] else 1.0
    return min(amax, (b + frac) * hist.width)


def entropy_threshold(hist: GridHistogram, num_quant_bins: int = 128) -> float:
    """TensorRT's KL-divergence threshold on ``|x|``.

    For every candidate ``i >= num_quant_bins`` bins: P = the first ``i`` bins with all mass beyond
    added to the last; Q = those ``i`` bins (without the outliers) merged into ``num_quant_bins``
    groups, each spread evenly over the group's non-empty bins of P. The threshold is the upper
    edge of the candidate with the smallest KL(P || Q). As in NVIDIA's pytorch-quantization/ModelOpt,
    the first bin's count is replaced by the second's, so the zeros of a ReLU do not pull the
    threshold down. Evaluated in closed form from prefix sums.

    KL(P || Q) has a degenerate minimum near 0 when almost every value lies beyond the candidate
    (one-signed data far from zero, e.g. Sigmoid gates in [0.2, 0.8]): P collapses onto its last bin
    and so does Q. Candidates below the ``KL_MIN_KEPT`` percentile of ``|x|`` are therefore not
    considered; on ReLU or Gaussian-like data the KL optimum clips far less than that, so it binds
    only in the degenerate case.
    """
    amax = max(-hist.min, hist.max)
    if hist.k is None:
        return amax
    h_int, n = _used_abs_bins(hist)
    if n <= num_quant_bins:
        return amax
    h = h_int.astype(np.float64)
    h[0] = h[1]  # the zero bin holds every ReLU zero: that spike must not drive the search (ModelOpt)
    zp = float(h.sum())
    csum = np.concatenate(([0.0], np.cumsum(h)))
    hlogh = np.where(h > 0, h * np.log(np.where(h > 0, h, 1.0)), 0.0)
    clogc = np.concatenate(([0.0], np.cumsum(hlogh)))
    nz = np.concatenate(([0], np.cumsum(h > 0)))

    qb = num_quant_bins
    first = max(qb, int(np.ceil(percentile_threshold(hist, KL_MIN_KEPT) / hist.width)))
    if first >= n:
        return amax
    cand = np.arange(first, n + 1)
    merged = cand // qb  # bins per quantized group; the last group also takes the remainder
    # Groups 0..qb-2 depend on `merged` only: their sum of P*log(Q) is computed once per value.
    ms = np.arange(int(merged[0]), int(merged[-1]) + 1)
    bounds = np.arange(qb)[None, :] * ms[:, None]  # group starts; bounds[:, -1] = last group's start
    q = csum[bounds[:, 1:]] - csum[bounds[:, :-1]]
    nnz = nz[bounds[:, 1:]] - nz[bounds[:, :-1]]
    with np.errstate(divide="ignore", invalid="ignore"):
        head = np.where(q > 0, q * np.log(q / np.maximum(nnz, 1)), 0.0).sum(axis=1)
    # The last group, per candidate: P's last bin also holds every value beyond the threshold.
    start = bounds[merged - ms[0], -1]
    outliers = zp - csum[cand]
    last = h[cand - 1] + outliers
    q_last = csum[cand] - csum[start]
    nnz_last = nz[cand] - nz[start] + ((h[cand - 1] == 0) & (outliers > 0))
    q_val = np.where(q_last > 0, q_last / np.maximum(nnz_last, 1), _EPS)
    pg_last = q_last + outliers
    plogq = head[merged - ms[0]] + np.where(pg_last > 0, pg_last * np.log(q_val), 0.0)
    plogp = clogc[cand - 1] + np.where(last > 0, last * np.log(np.maximum(last, 1e-300)), 0.0)
    zq = csum[cand]
    with np.errstate(divide="ignore"):
        kl = (plogp - plogq) / zp - np.log(zp) + np.log(zq)
    kl[zq <= 0] = np.inf
    best = int(cand[kl.size - 1 - int(np.argmin(kl[::-1]))])  # the largest of equal minima
    return min(amax, best * hist.width)


def mse_threshold(hist: GridHistogram, bits: int = 8) -> float:
    """Threshold minimizing the expected squared error of ``2**bits``-level quantization.

    For each candidate ``T`` (a bin edge) the range is ``(max(min, -T), min(max, T))``; the error is
    rounding noise ``step**2 / 12`` per value inside plus the squared distance of every clipped
    value (at its bin centre) to the range end.
    """
    amax = max(-hist.min, hist.max)
    if hist.k is None:
        return amax
    _, n = _used_abs_bins(hist)
    w = hist.width
    half = hist.bins // 2
    c = hist.counts.astype(np.float64)
    centres = (np.arange(hist.bins) - half + 0.5) * w
    m0, m1, m2 = c, c * centres, c * centres * centres
    # suffix sums (bins >= j) and prefix sums (bins < j)
    s0, s1, s2 = (np.concatenate((np.cumsum(a[::-1])[::-1], [0.0])) for a in (m0, m1, m2))
    p0, p1, p2 = (np.concatenate(([0.0], np.cumsum(a))) for a in (m0, m1, m2))
    i = np.arange(1, n + 1)
    t = i * w
    up, down = half + i, half - i
    clip = (s2[up] - 2 * t * s1[up] + t * t * s0[up]) + (p2[down] + 2 * t * p1[down] + t * t * p0[down])
    inside = float(hist.count) - s0[up] - p0[down]
    lo = np.maximum(hist.min, -t)
    hi = np.minimum(hist.max, t)
    step = (hi - lo) / (2**bits - 1)
    err = np.where(lo <= hi, clip + inside * step * step / 12.0, np.inf)
    return min(amax, float(t[int(np.argmin(err))]))
