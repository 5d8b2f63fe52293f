"""Observers: stream a tensor's values (``update``), combine (``merge``), answer a range (``range``).

Observers only collect statistics; turning a range into scale and zero point is the planner's job.
Histogram observers hold one fixed-size :class:`GridHistogram`, so memory does not grow with the
number of samples and the range does not depend on the batch size or order. Non-finite values
(e.g. ``-inf`` attention masks) are counted in ``nonfinite`` and left out of the statistics.
"""

from __future__ import annotations

import inspect
import math
from abc import ABC, abstractmethod
from typing import Any, ClassVar

import numpy as np

from dsqc.calibration.histogram import DEFAULT_BINS, GridHistogram
from dsqc.calibration.thresholds import entropy_threshold, mse_threshold, percentile_threshold
from dsqc.errors import RecipeError


class Observer(ABC):
    """Collects statistics of one tensor."""

    method: ClassVar[str]

    @abstractmethod
    def update(self, x: np.ndarray) -> None:
        """Add a batch of values (any shape)."""

    @abstractmethod
    def merge(self, other: Observer) -> None:
        """Add everything ``other`` (same class and options) has seen."""

    @abstractmethod
    def range(self) -> tuple[float, float]:
        """The chosen clipping range ``(lo, hi)``; ``ValueError`` if no finite value was seen."""

    @property
    @abstractmethod
    def min(self) -> float:
        """Exact minimum of the finite values seen (``inf`` if none)."""

    @property
    @abstractmethod
    def max(self) -> float:
        """Exact maximum of the finite values seen (``-inf`` if none)."""

    @property
    @abstractmethod
    def nonfinite(self) -> int:
        """How many NaN/Inf values were seen (and ignored)."""

    def _check_merge(self, other: Observer) -> None:
        if type(other) is not type(self):
            raise TypeError(f"cannot merge {type(other).__name__} into {type(self).__name__}")

    def _require_data(self) -> None:
        if not math.isfinite(self.min):
            raise ValueError("no finite value observed")


class MinMaxObserver(Observer):
    """The exact range of the data."""

    method = "minmax"

    def __init__(self) -> None:
        self._min, self._max, self._nonfinite = math.inf, -math.inf, 0

    def update(self, x: np.ndarray) -> None:
        flat = np.asarray(x).reshape(-1)
        if flat.size == 0:
            return
        lo, hi = float(flat.min()), float(flat.max())
        if not (math.isfinite(lo) and math.isfinite(hi)):
            finite = flat[np.isfinite(flat)]
            self._nonfinite += flat.size - finite.size
            if finite.size == 0:
                return
            lo, hi = float(finite.min()), float(finite.max())
        self._min, self._max = min(self._min, lo), max(self._max, hi)

    def merge(self, other: Observer) -> None:
        self._check_merge(other)
        assert isinstance(other, MinMaxObserver)
        self._min, self._max = min(self._min, other._min), max(self._max, other._max)
        self._nonfinite += other._nonfinite

    def range(self) -> tuple[float, float]:
        self._require_data()
        return self._min, self._max

    @property
    def min(self) -> float:
        return self._min

    @property
    def max(self) -> float:
        return self._max

    @property
    def nonfinite(self) -> int:
        return self._nonfinite


class HistogramObserver(Observer):
    """Base of the observers that pick a symmetric threshold ``T`` from a histogram."""

    def __init__(self, bins: int = DEFAULT_BINS) -> None:
        self.hist = GridHistogram(bins)

    def update(self, x: np.ndarray) -> None:
        self.hist.update(x)

    def merge(self, other: Observer) -> None:
        self._check_merge(other)
        assert isinstance(other, HistogramObserver)
        self.hist.merge(other.hist)

    @abstractmethod
    def threshold(self) -> float:
        """The clipping threshold ``T >= 0`` on ``|x|``."""

    def range(self) -> tuple[float, float]:
        self._require_data()
        lo, hi = self.hist.min, self.hist.max
        # single-signed data: the threshold must at least reach the value nearest zero
        t = max(self.threshold(), lo if lo > 0 else 0.0, -hi if hi < 0 else 0.0)
        return max(lo, -t), min(hi, t)

    @property
    def min(self) -> float:
        return self.hist.min

    @property
    def max(self) -> float:
        return self.hist.max

    @property
    def nonfinite(self) -> int:
        return self.hist.nonfinite


class PercentileObserver(HistogramObserver):
    """``T`` = the given percentile of ``|x|``."""

    method = "percentile"

    def __init__(self, percentile: float = 99.99, bins: int = DEFAULT_BINS) -> None:
        if not 0.0 < percentile <= 100.0:
            raise ValueError(f"percentile must be in (0, 100], got {percentile}")
        super().__init__(bins)
        self.percentile = float(percentile)

    def threshold(self) -> float:
        return percentile_threshold(self.hist, self.percentile)


class EntropyObserver(HistogramObserver):
    """``T`` minimizing the KL divergence of the ``num_quant_bins``-level distribution (TensorRT)."""

    method = "entropy"

    def __init__(self, num_quant_bins: int = 128, bins: int = DEFAULT_BINS) -> None:
        if not 2 <= num_quant_bins <= bins // 4:
            raise ValueError(f"num_quant_bins must be in [2, {bins // 4}], got {num_quant_bins}")
        super().__init__(bins)
        self.num_quant_bins = int(num_quant_bins)

    def threshold(self) -> float:
        return entropy_threshold(self.hist, self.num_quant_bins)


class MseObserver(HistogramObserver):
    """``T`` minimizing the expected rounding + clipping error of ``bits``-bit quantization."""

    method = "mse"

    def __init__(self, bits: int = 8, bins: int = DEFAULT_BINS) -> None:
        if not 2 <= bits <= 16:
            raise ValueError(f"bits must be in [2, 16], got {bits}")
        super().__init__(bins)
        self.bits = int(bits)

    def threshold(self) -> float:
        return mse_threshold(self.hist, self.bits)


OBSERVERS: dict[str, type[Observer]] = {
    cls.method: cls for cls in (MinMaxObserver, PercentileObserver, EntropyObserver, MseObserver)
}


def make_observer(method: str, **options: Any) -> Observer:
    """A fresh observer for ``method`` (minmax|percentile|entropy|mse); bad input → ``RecipeError``."""
    cls = OBSERVERS.get(method)
    if cls is None:
        raise RecipeError(f"unknown calibration method {method!r}; use one of: {', '.join(OBSERVERS)}")
    known = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    for key in options:
        if key not in known:
            allowed = ", ".join(known) or "none"
            raise RecipeError(
                f"unknown option {key!r} for calibration method {method!r} (allowed: {allowed})")
    try:
        return cls(**options)
    except (TypeError, ValueError) as exc:
        raise RecipeError(f"calibration method {method!r}: {exc}") from None
