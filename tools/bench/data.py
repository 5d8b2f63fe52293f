"""Bench sample files: one ``.npz`` per set (input name → ``[N, ...]``, optional ``labels``)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

Feeds = dict[str, np.ndarray]
LABELS = "labels"


def save_npz(path: Path, feeds: Feeds, labels: np.ndarray | None = None) -> Path:
    arrays = dict(feeds)
    if labels is not None:
        arrays[LABELS] = labels
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return path


def load_npz(path: Path, limit: int | None = None) -> tuple[Feeds, np.ndarray | None]:
    with np.load(path, allow_pickle=False) as npz:
        arrays = {k: npz[k][:limit] for k in npz.files}
    labels = arrays.pop(LABELS, None)
    return arrays, labels


def batches(feeds: Feeds, batch_size: int) -> Iterator[Feeds]:
    n = len(next(iter(feeds.values())))
    for start in range(0, n, batch_size):
        yield {k: v[start : start + batch_size] for k, v in feeds.items()}


def seeded_normal(shapes: dict[str, tuple[int, ...]], n: int, seed: int) -> Feeds:
    """``n`` samples of N(0, 1) float32 per input (shapes without the batch axis)."""
    rng = np.random.default_rng(seed)
    return {k: rng.standard_normal((n, *s), dtype=np.float32) for k, s in shapes.items()}
