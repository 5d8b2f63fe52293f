"""Observers against closed-form expectations; batching, order and merging do not change results."""

from __future__ import annotations

import numpy as np
import pytest

from dsqc.calibration import make_observer
from dsqc.calibration.histogram import GridHistogram
from dsqc.calibration.observers import HistogramObserver
from dsqc.calibration.thresholds import entropy_threshold
from dsqc.errors import RecipeError

METHODS = ["minmax", "percentile", "entropy", "mse"]


def gaussian(n: int = 100_000, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(n).astype(np.float32)


def test_minmax_is_exact() -> None:
    x = gaussian() * 3 + 1
    obs = make_observer("minmax")
    for part in np.array_split(x, 7):
        obs.update(part)
    assert obs.range() == (float(x.min()), float(x.max()))


@pytest.mark.parametrize("p", [90.0, 99.0, 99.99])
def test_percentile_within_one_bin(p: float) -> None:
    x = gaussian() * 2
    obs = make_observer("percentile", percentile=p)
    obs.update(x)
    assert isinstance(obs, HistogramObserver)
    lo, hi = obs.range()
    want = float(np.percentile(np.abs(x), p))
    assert abs(hi - want) <= obs.hist.width and lo == -hi


def naive_kl_threshold(hist: GridHistogram, qb: int) -> float:
    """TensorRT/MXNet's candidate loop written out plainly (reference for the vectorized one)."""
    h = hist.abs_counts().astype(np.float64)
    n = min(h.size, int(max(-hist.min, hist.max) / hist.width) + 1)
    h = h[:n]
    h[0] = h[1]
    best, best_i = np.inf, n
    for i in range(qb, n + 1):
        p = h[:i].copy()
        p[-1] += h[i:].sum()
        m = i // qb
        q = np.zeros(i)
        for j in range(qb):
            start, stop = j * m, (i if j == qb - 1 else (j + 1) * m)
            nz = p[start:stop] > 0
            total = h[start:stop].sum()
            if nz.any():
                q[start:stop][nz] = total / nz.sum() if total > 0 else 1e-4
        mask = p > 0
        pn, qn = p / p.sum(), q / h[:i].sum()
        kl = float(np.sum(pn[mask] * np.log(pn[mask] / qn[mask])))
        if kl <= best:
            best, best_i = kl, i
    return best_i * hist.width


def test_entropy_matches_the_plain_candidate_loop() -> None:
    x = np.concatenate([gaussian(20_000), np.float32([12.0, -9.0, 15.0])])
    hist = GridHistogram(bins=1024)
    hist.update(x)
    assert entropy_threshold(hist, 16) == pytest.approx(naive_kl_threshold(hist, 16), abs=1e-12)
    relu = GridHistogram(bins=1024)
    relu.update(np.maximum(x, 0))
    assert entropy_threshold(relu, 16) == pytest.approx(naive_kl_threshold(relu, 16), abs=1e-12)


def test_entropy_clips_outliers() -> None:
    x = np.concatenate([gaussian(), np.float32([40.0, -35.0, 50.0])])
    lo, hi = _range("entropy", x)
    assert 2.5 < hi < 10.0 and -10.0 < lo < -2.5


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_entropy_keeps_one_signed_data_away_from_zero(sign: float) -> None:
    """Sigmoid gates in [0.2, 0.8]: plain KL collapses the range onto the minimum (a 0-width range)."""
    gates = 1.0 / (1.0 + np.exp(-0.3 * gaussian()))
    lo, hi = _range("entropy", sign * gates)
    p99 = float(np.percentile(gates, 99.0))
    if sign > 0:
        assert lo == pytest.approx(float(gates.min())) and hi >= p99 - 1e-3
    else:
        assert hi == pytest.approx(-float(gates.min())) and lo <= -p99 + 1e-3


def test_mse_is_reasonable() -> None:
    x = gaussian(200_000)
    lo4, hi4 = _range("mse", x, bits=4)
    _, hi8 = _range("mse", x, bits=8)
    assert 2.0 < hi4 < 3.0 and lo4 == -hi4  # optimal 4-bit clip of N(0,1) is about 2.5 sigma
    assert hi4 < hi8 <= float(x.max())
    laplace = np.random.default_rng(3).laplace(size=200_000).astype(np.float32)
    assert 4.0 < _range("mse", laplace)[1] < 0.8 * float(np.abs(laplace).max())  # heavy tail is clipped


@pytest.mark.parametrize("method", METHODS)
def test_relu_outputs_start_at_zero(method: str) -> None:
    lo, hi = _range(method, np.maximum(gaussian(), 0))
    assert lo == 0.0 and hi > 1.0


def _range(method: str, x: np.ndarray, **opts: float) -> tuple[float, float]:
    obs = make_observer(method, **opts)
    obs.update(x)
    return obs.range()


@pytest.mark.parametrize("method", METHODS)
def test_batching_and_order_do_not_matter(method: str) -> None:
    # growing magnitudes force several histogram rescales in the chunked run
    x = np.concatenate([gaussian(5000, seed=s) * 4.0**s for s in range(4)])
    whole = make_observer(method)
    whole.update(x)
    chunked = make_observer(method)
    for part in np.array_split(x, 13):
        chunked.update(part)
    backwards = make_observer(method)
    for part in np.array_split(x, 5)[::-1]:
        backwards.update(part)
    assert whole.range() == chunked.range() == backwards.range()
    if isinstance(whole, HistogramObserver):
        assert isinstance(chunked, HistogramObserver)
        np.testing.assert_array_equal(whole.hist.counts, chunked.hist.counts)


@pytest.mark.parametrize("method", METHODS)
def test_merge_equals_one_observer(method: str) -> None:
    small, large = gaussian(3000, seed=1) * 0.01, gaussian(3000, seed=2) * 50
    a, b, both = make_observer(method), make_observer(method), make_observer(method)
    a.update(small)
    b.update(large)
    both.update(np.concatenate([small, large]))
    a.merge(b)
    assert a.range() == both.range()
    c = make_observer(method)
    c.update(large)
    d = make_observer(method)
    d.update(small)
    c.merge(d)  # the smaller-scale histogram merged into the larger one
    assert c.range() == both.range()


def test_histogram_memory_is_fixed() -> None:
    hist = GridHistogram()
    hist.update(gaussian(10_000))
    size, nbytes = hist.counts.size, hist.counts.nbytes
    for s in range(10):
        hist.update(gaussian(10_000, seed=s) * (s + 1))
    assert hist.counts.size == size and hist.counts.nbytes == nbytes
    assert hist.count == 110_000 and int(hist.counts.sum()) == 110_000


def test_nonfinite_values_are_counted_and_ignored() -> None:
    x = np.array([1.0, -np.inf, 2.0, np.nan, -3.0], dtype=np.float32)
    for method in METHODS:
        obs = make_observer(method)
        obs.update(x)
        assert obs.nonfinite == 2 and obs.min == -3.0 and obs.max == 2.0
    empty = make_observer("entropy")
    empty.update(np.array([np.nan], dtype=np.float32))
    with pytest.raises(ValueError):
        empty.range()


def test_all_zero_tensor() -> None:
    for method in METHODS:
        assert _range(method, np.zeros(100, np.float32)) == (0.0, 0.0)


def test_make_observer_errors() -> None:
    with pytest.raises(RecipeError, match="unknown calibration method 'kl'"):
        make_observer("kl")
    with pytest.raises(RecipeError, match="unknown option 'bits' for calibration method 'entropy'"):
        make_observer("entropy", bits=8)
    with pytest.raises(RecipeError, match="percentile must be in"):
        make_observer("percentile", percentile=0)
    with pytest.raises(TypeError):
        make_observer("entropy").merge(make_observer("mse"))


@pytest.mark.parametrize("method", METHODS)
def test_single_signed_data_far_from_zero(method: str) -> None:
    x = np.random.default_rng(4).uniform(5.0, 6.0, 10_000).astype(np.float32)
    lo, hi = _range(method, x)
    assert 5.0 <= lo < hi <= 6.0
    lo, hi = _range(method, -x)
    assert -6.0 <= lo < hi <= -5.0


def test_every_observer_is_a_range_method_and_back() -> None:
    from dsqc.calibration.observers import OBSERVERS
    from dsqc.range_methods import OBSERVER_METHODS

    assert set(OBSERVERS) == set(OBSERVER_METHODS)
