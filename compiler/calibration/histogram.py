"""A fixed-size, mergeable signed histogram on a global power-of-two grid.

The histogram covers ``[-2**k, 2**k)`` with ``bins`` equal bins, where ``k`` is the smallest exponent
with ``max|x| < 2**k``. Every bin edge is a multiple of ``2**(k+1) / bins``, so when a larger value
arrives and ``k`` grows by one, adjacent bin pairs merge exactly into the middle half. The counts are
therefore always those of *all* data binned at the final ``k``: independent of batch size and order,
and two histograms merge exactly. Memory is ``bins`` int64 counts, whatever the amount of data.
"""

from __future__ import annotations

import math

import numpy as np

DEFAULT_BINS = 8192
_K_MIN = -100  # values below 2**-100 share the central bins; keeps the float32 scale finite
_CHUNK = 1 << 18  # elements per binning step: bounds the temporaries and stays cache-friendly


class GridHistogram:
    """Counts of finite values over ``[-2**k, 2**k)``; exact ``min``/``max``; non-finite values counted."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        if bins < 8 or bins % 4 or bins & (bins - 1):
            raise ValueError(f"histogram bins must be a power of two >= 8, got {bins}")
        self.bins = bins
        self.counts = np.zeros(bins, dtype=np.int64)
        self.k: int | None = None  # None until a non-zero value arrives (zeros sit in bin bins/2)
        self.min = math.inf
        self.max = -math.inf
        self.count = 0
        self.nonfinite = 0

    # -- geometry ---------------------------------------------------------------------------------
    @property
    def width(self) -> float:
        """Bin width ``2**(k+1) / bins`` (0 while every value seen was zero)."""
        return 0.0 if self.k is None else math.ldexp(2.0 / self.bins, self.k)

    def abs_counts(self) -> np.ndarray:
        """Histogram of ``|x|``: ``bins/2`` bins of :attr:`width` starting at 0."""
        half = self.bins // 2
        return self.counts[half:] + self.counts[half - 1 :: -1]

    def edges(self) -> np.ndarray:
        """The ``bins + 1`` signed bin edges."""
        w = self.width
        return (np.arange(self.bins + 1, dtype=np.float64) - self.bins // 2) * w

    # -- updates ----------------------------------------------------------------------------------
    def _grow(self, k: int) -> None:
        if self.k is None:
            self.k = k
            return
        quarter = self.bins // 4
        for _ in range(min(k - self.k, self.bins.bit_length())):
            merged = self.counts.reshape(-1, 2).sum(axis=1)
            self.counts = np.zeros_like(self.counts)
            self.counts[quarter : quarter + merged.size] = merged
        self.k = k

    def update(self, x: np.ndarray) -> None:
        """Add every element of ``x`` (any shape; converted to float32)."""
        flat = np.asarray(x)
        if flat.dtype != np.float32:
            flat = flat.astype(np.float32)
        flat = flat.reshape(-1)
        if flat.size == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = flat[np.isfinite(flat)]
            self.nonfinite += flat.size - finite.size
            flat = finite
            if flat.size == 0:
                return
            lo, hi = float(flat.min()), float(flat.max())
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += flat.size
        amax = max(-lo, hi)
        if amax > 0.0:
            k = max(math.frexp(amax)[1], _K_MIN)  # amax < 2**k
            if self.k is None or k > self.k:
                self._grow(k)
        half = self.bins // 2
        if self.k is None:  # all zeros so far: bin bins/2 at every k
            self.counts[half] += flat.size
            return
        self._bin(flat, np.float32(math.ldexp(self.bins / 2.0, -self.k)), half)

    def _bin(self, flat: np.ndarray, scale: np.float32, half: int) -> None:
        # x * scale is exact (power of two), floor is exact, + half is exact (integers < 2**24):
        # the bin of x is therefore the same at every k and in every batch.
        n = min(flat.size, _CHUNK)
        buf = np.empty(n, dtype=np.float32)
        idx = np.empty(n, dtype=np.intp)
        for start in range(0, flat.size, _CHUNK):
            chunk = flat[start : start + _CHUNK]
            y, ii = buf[: chunk.size], idx[: chunk.size]
            np.multiply(chunk, scale, out=y)
            np.floor(y, out=y)
            np.add(y, half, out=ii, casting="unsafe")
            self.counts += np.bincount(ii, minlength=self.bins)

    def merge(self, other: GridHistogram) -> None:
        """Add ``other``'s data (same ``bins``) to this histogram, exactly."""
        if other.bins != self.bins:
            raise ValueError(f"cannot merge histograms of {self.bins} and {other.bins} bins")
        counts = other.counts
        if other.k is not None and (self.k is None or other.k > self.k):
            self._grow(other.k)
        if other.k is not None and self.k is not None and other.k < self.k:
            tmp = GridHistogram(other.bins)
            tmp.counts, tmp.k = other.counts.copy(), other.k
            tmp._grow(self.k)
            counts = tmp.counts
        self.counts = self.counts + counts
        self.min, self.max = min(self.min, other.min), max(self.max, other.max)
        self.count += other.count
        self.nonfinite += other.nonfinite
