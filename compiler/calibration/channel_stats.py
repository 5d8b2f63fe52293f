"""Per-channel statistics of chosen tensors, streamed through the FP32 model in ONNX Runtime.

The PTQ boosters need more than a tensor's range: SmoothQuant wants each input channel's absolute
maximum, bias correction each channel's mean. Each requested tensor names its channel axis; every
batch is reduced to per-channel sums and maxima in float64 and dropped, so memory stays at one batch
of the requested tensors plus two vectors per tensor. Non-finite values are left out.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx

from dsqc.calibration.data import SampleSet
from dsqc.calibration.ort_session import BatchRunner, first_line, output_session
from dsqc.calibration.runner import _batch_plan, _check_tensors, _feed_names, _known_types
from dsqc.errors import CalibrationError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ChannelStats:
    """``absmax`` and ``mean`` per channel (float64 ``[C]``) over ``count`` values per channel."""

    absmax: np.ndarray
    mean: np.ndarray
    count: int


class _Accumulator:
    def __init__(self, axis: int) -> None:
        self.axis = axis
        self.absmax: np.ndarray | None = None
        self.total: np.ndarray | None = None
        self.count: np.ndarray | None = None

    def update(self, x: np.ndarray) -> None:
        x = np.moveaxis(np.asarray(x, np.float64), self.axis, 0)
        x = x.reshape(x.shape[0], -1)
        finite = np.isfinite(x)
        clean = np.where(finite, x, 0.0)
        absmax, total, count = np.abs(clean).max(axis=1, initial=0.0), clean.sum(axis=1), finite.sum(axis=1)
        if self.absmax is None or self.total is None or self.count is None:
            self.absmax, self.total, self.count = absmax, total, count
            return
        if absmax.shape != self.absmax.shape:
            raise CalibrationError(
                f"channel count changed between batches ({self.absmax.size} → {absmax.size})")
        self.absmax = np.maximum(self.absmax, absmax)
        self.total += total
        self.count += count

    def result(self) -> ChannelStats:
        assert self.absmax is not None and self.total is not None and self.count is not None
        mean = self.total / np.maximum(self.count, 1)
        return ChannelStats(self.absmax, mean, int(self.count.min()))


def channel_stats(proto: onnx.ModelProto, tensors: Mapping[str, int], samples: SampleSet,
                  batch_size: int = 8) -> dict[str, ChannelStats]:
    """Per-channel ``absmax`` and ``mean`` of each tensor (name → channel axis, e.g. -1 or 1)."""
    names = list(tensors)
    if not names:
        return {}
    _check_tensors(proto, names)
    feed_names = _feed_names(proto, samples)
    fed = [n for n in names if n in feed_names]
    run = [n for n in names if n not in feed_names]
    session = output_session(proto, run, _known_types(proto)) if run else None
    accs = {n: _Accumulator(tensors[n]) for n in names}
    bs, samples, _ = _batch_plan(proto, samples, batch_size)
    runner = BatchRunner(session, run) if session is not None else None
    for batch in samples.batches(bs):
        feeds = {k: batch[k] for k in feed_names}
        try:
            parts = runner(feeds) if runner is not None else []
        except Exception as exc:
            raise CalibrationError(f"{samples.source}: ONNX Runtime failed: {first_line(exc)}") from None
        for outs in parts:
            for name, value in zip(run, outs, strict=True):
                accs[name].update(value)
        for name in fed:
            accs[name].update(feeds[name])
    log.info("per-channel statistics of %d tensors over %d samples", len(names), len(samples))
    return {n: acc.result() for n, acc in accs.items()}
