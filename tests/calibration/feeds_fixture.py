"""Callables for the ``module:function`` calibration form (imported by name in the tests)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np


def samples() -> Iterator[dict[str, np.ndarray]]:
    """Three items: one sample, a batch of 2, one sample (4 samples), for input x [N,2,3]."""
    rng = np.random.default_rng(7)
    yield {"x": rng.standard_normal((2, 3)).astype(np.float32)}
    yield {"x": rng.standard_normal((2, 2, 3)).astype(np.float32)}
    yield {"x": rng.standard_normal((2, 3)).astype(np.float32), "labels": np.int64(0)}


def endless() -> Iterator[dict[str, np.ndarray]]:
    """An infinite stream of single samples (the limit must stop it)."""
    i = 0
    while True:
        yield {"x": np.full((2, 3), i, dtype=np.float32)}
        i += 1


def one_batch() -> dict[str, np.ndarray]:
    """A plain dict: one batch of 5."""
    return {"x": np.ones((5, 2, 3), dtype=np.float32)}


def bad_item() -> list[object]:
    return [[1, 2, 3]]


def broken() -> Iterator[dict[str, np.ndarray]]:
    raise RuntimeError("dataset server down")
    yield {}  # pragma: no cover


NOT_CALLABLE = 3
