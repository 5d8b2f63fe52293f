"""What the targets of one multi-target build share: the normalized model, the calibration and
held-out samples, the boosted FP32 model and the calibration statistics.

A single-target build uses a fresh ``SharedStages`` and computes everything once, as before. A
``--target a,b,c`` build passes one instance to every target's ``build``: each stage runs for the
first target that needs it and is reused by the others. Statistics are independent of the target
profile (observers only collect; the planner decides scales), so they are shared per boosted model
and range method; a target whose boosters change the FP32 model calibrates its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import onnx

if TYPE_CHECKING:
    from dsqc.calibration.runner import TensorStats
    from dsqc.quant.boosters import BoosterOptions
    from dsqc.quant.recipe import Recipe


@dataclass
class SharedStages:
    """Memoized stages, keyed by what each depends on, so a different input is never reused."""

    _memo: dict[tuple[Any, ...], Any] = field(default_factory=dict)
    _stats: dict[tuple[int, str, float, str], dict[str, TensorStats]] = field(default_factory=dict)
    hits: list[str] = field(default_factory=list)  # stages reused, in order (for the report and tests)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    _locks: dict[tuple[Any, ...], threading.Lock] = field(default_factory=dict)

    def once(self, stage: str, key: tuple[Any, ...], compute: Callable[[], Any]) -> Any:
        """``compute()`` the first time ``(stage, key)`` is asked for, the same object afterwards; a
        thread asking while another computes it waits for that result."""
        full = (stage, *key)
        with self._guard:
            lock = self._locks.setdefault(full, threading.Lock())
        with lock:
            if full in self._memo:
                self.hits.append(stage)
                return self._memo[full]
            value = compute()
            self._memo[full] = value
            return value

    def get(self, stage: str) -> Any:
        """What a stage without key computed, or ``None`` if no target ran it."""
        return self._memo.get((stage,))

    def boosted(self, fp32: onnx.ModelProto, options: BoosterOptions,
                compute: Callable[[], onnx.ModelProto]) -> onnx.ModelProto:
        """The FP32 model after the boosters ``options`` asks for (same options → same model)."""
        return self.once("boosters", (id(fp32), tuple(sorted(dataclasses.asdict(options).items()))),
                         compute)

    @contextlib.contextmanager
    def calibration(self, source: onnx.ModelProto, recipe: Recipe,
                    subset: str = "") -> Iterator[dict[str, TensorStats]]:
        """The statistics gathered so far on ``source`` with ``recipe``'s range method, held (one
        target at a time) while the caller calibrates what is missing and adds it to the dict.
        ``subset`` names a part of the calibration samples (``range_select``'s fitting part)."""
        key = (*_stats_key(source, recipe), subset)
        with self._guard:
            lock = self._locks.setdefault(("calibration", *key), threading.Lock())
        with lock:
            known = self._stats.setdefault(key, {})
            if known:
                self.hits.append("calibration")
            yield known


def _stats_key(source: onnx.ModelProto, recipe: Recipe) -> tuple[int, str, float]:
    return id(source), recipe.method, float(recipe.percentile)

