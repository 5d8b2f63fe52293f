"""Calibration and evaluation samples: the model's inputs, a ``SampleSet``, and ``load_samples``.

``spec`` forms: an ``.npz`` (keys = input names, optional ``labels``) or ``.npy`` file; a folder of
``.npy``/``.npz`` files or of images; ``module:function`` (or ``file.py:function``) yielding feed
dicts; ``mnist`` (built in); ``random`` (seeded synthetic data). Every array, file or item is one
sample (the input's rank minus one) or a batch (the input's rank, samples on axis 0).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dsqc.calibration import sources
from dsqc.calibration.images import ImagePreprocess
from dsqc.calibration.inputs import InputSpec, fixed_batch, model_inputs
from dsqc.calibration.validate import check_feeds
from dsqc.errors import CalibrationError

__all__ = ["ImagePreprocess", "InputSpec", "SampleSet", "fixed_batch", "load_samples", "model_inputs"]


@dataclass
class SampleSet:
    """Samples stacked on axis 0 of every input array; optional labels ``[N]``.

    ``fixed_batch`` is set (by ``for_model_batch``) when the model pins its batch size: every batch
    then has exactly that many samples, whatever size a caller asks ``batches`` for.
    """

    feeds: dict[str, np.ndarray]
    source: str
    synthetic: bool = False
    labels: np.ndarray | None = None
    fixed_batch: int | None = None

    def __len__(self) -> int:
        return len(next(iter(self.feeds.values()))) if self.feeds else 0

    def _slice(self, start: int, stop: int, source: str) -> SampleSet:
        labels = None if self.labels is None else self.labels[start:stop]
        feeds = {k: v[start:stop] for k, v in self.feeds.items()}
        return SampleSet(feeds, source, self.synthetic, labels, self.fixed_batch)

    def batches(self, batch_size: int) -> Iterator[dict[str, np.ndarray]]:
        """Consecutive feed dicts of ``batch_size`` samples (the last may be smaller; all of exactly
        ``fixed_batch`` when the model pins it); views, no copies."""
        if batch_size < 1:
            raise ValueError(f"batch_size must be >= 1, got {batch_size}")
        step = self.fixed_batch or batch_size
        for start in range(0, len(self), step):
            yield {k: v[start : start + step] for k, v in self.feeds.items()}

    def take(self, n: int) -> SampleSet:
        """The first ``n`` samples (all of them if there are fewer); with a fixed batch, whole batches
        (at least one)."""
        if self.fixed_batch:
            n = max(self.fixed_batch, n - n % self.fixed_batch)
        n = max(0, min(n, len(self)))
        return self if n == len(self) else self._slice(0, n, f"{self.source}, first {n}")

    def for_model_batch(self, batch: int | None, purpose: str) -> SampleSet:
        """This set as the model can run it: whole batches of ``batch`` when the model fixes its batch
        size (None: unchanged). A one-line error when there is not even one batch."""
        if batch is None:
            return self
        n = len(self)
        if n < batch:
            raise CalibrationError(
                f"{self.source}: the model's batch size is fixed to {batch} (axis 0 of its inputs) but "
                f"the {purpose} data has {n} sample(s); give at least {batch}, or export the model with "
                "a dynamic batch axis")
        fitted = self._slice(0, n - n % batch, self.source if n % batch == 0 else
                             f"{self.source}, first {n - n % batch}")
        fitted.fixed_batch = batch
        return fitted

    def split(self, n_eval: int) -> tuple[SampleSet, SampleSet]:
        """``(calibration, held-out eval)``: the last ``n_eval`` samples are the eval part."""
        n = len(self)
        if not 0 < n_eval < n:
            raise CalibrationError(
                f"{self.source}: cannot hold out {n_eval} of {n} samples for evaluation; "
                "give more samples or a separate evaluation set")
        cut = n - n_eval
        return (self._slice(0, cut, f"{self.source}, first {cut}"),
                self._slice(cut, n, f"{self.source}, last {n_eval}"))


def load_samples(
    spec: str,
    inputs: list[InputSpec],
    limit: int | None = None,
    preprocess: ImagePreprocess | None = None,
    purpose: str = "calibration",
) -> SampleSet:
    """Read and validate samples for ``inputs`` from ``spec``; keep the first ``limit``.

    The built-in names ``mnist`` and ``random`` win over files of that name (write ``./mnist``).
    Any problem is a one-line ``CalibrationError`` naming the input, file or sample.
    """
    spec = os.fspath(spec)
    where = f"{purpose} data {spec!r}"
    if limit is not None and limit < 1:
        raise CalibrationError(f"{where}: the sample limit must be >= 1, got {limit}")
    if not inputs:
        raise CalibrationError(f"{where}: the model has no inputs to feed")
    path = Path(spec)
    synthetic = False
    if spec == "random":
        feeds, labels = sources.from_random(inputs, limit)
        synthetic = True
    elif spec == "mnist":
        feeds, labels = sources.from_mnist(inputs, limit, purpose, where)
    elif path.is_file():
        feeds, labels = sources.from_file(path, inputs, limit, where)
    elif path.is_dir():
        feeds, labels = sources.from_folder(path, inputs, limit, preprocess, where)
    elif sources.CALLABLE_RE.fullmatch(spec):
        feeds, labels = sources.from_callable(spec, inputs, limit, where)
    else:
        raise CalibrationError(
            f"{where}: no such file or folder, and not module:function, 'mnist' or 'random'")
    feeds = check_feeds(feeds, inputs, where)
    n = len(next(iter(feeds.values())))
    what = path.name if path.exists() and spec not in ("mnist", "random") else spec
    return SampleSet(feeds, f"{what} ({n} samples)", synthetic, labels)
