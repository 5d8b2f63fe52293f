"""Range coverage: how far the held-out data runs past the activation ranges the calibration data had.

A calibration set unlike the data a model will see sets ranges that clip it, and no range method can fix
that: on the real-weight bench's distilled EfficientNet-B0 (tools/bench/REAL_NOTES.md) the held-out photos
ran 3× past the calibrated ranges (median over activations), and every quantizer collapsed. The build
observes each quantized activation of the FP32 model on the held-out samples (one extra ORT pass) and
names the tensors whose held-out values span ``WARN_RATIO`` times what the calibration samples spanned
(measured against the observed calibration min/max, so a range method's deliberate clipping of rare
calibration outliers does not count).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

import onnx

from dsqc.calibration.data import SampleSet
from dsqc.calibration.runner import TensorStats, calibrate
from dsqc.errors import CalibrationError
from dsqc.quant.spec import QuantPlan

log = logging.getLogger(__name__)

# held-out values spanning 3x the calibration's: clipping is the error. Real-weight bench, 64 held-out
# samples: the distilled EfficientNet-B0 59 of 175 activations (up to 15.6x); ResNet-18, MobileNetV2,
# EfficientNet-Lite0, NudeNet, Silero: none
WARN_RATIO = 3.0
SAMPLES = 64
SHOWN = 5


def range_coverage(model: onnx.ModelProto, plan: QuantPlan, held_out: SampleSet, batch_size: int,
                   calibrated: Mapping[str, TensorStats]) -> dict[str, Any]:
    """``{"tensors", "samples", "past_range": [...] worst first}``: every per-tensor quantized activation
    of ``model`` observed on ``held_out``; ``past_range`` lists those spanning ``WARN_RATIO`` × the range
    they had in ``calibrated`` (the representable range where a tensor has no calibration stats)."""
    consts = {t.name for t in model.graph.initializer}
    specs = {n: s for n, s in plan.tensors.items() if n not in consts and s.axis is None}
    if not specs or len(held_out) == 0:
        return {"tensors": 0, "samples": 0, "past_range": []}
    try:
        stats = calibrate(model, list(specs), held_out.take(SAMPLES), method="minmax", batch_size=batch_size,
                          progress=False)
    except CalibrationError as exc:  # a report without coverage rather than a failed build
        log.warning("range coverage skipped: %s", exc)
        return {"tensors": 0, "samples": 0, "past_range": []}
    past: list[dict[str, Any]] = []  # {"tensor", "ratio": span holding both ÷ calibration span, ...}
    for name, s in stats.items():
        seen = calibrated.get(name)
        lo, hi = (seen.min, seen.max) if seen is not None else specs[name].representable_range()
        if hi <= lo:
            continue  # a constant on the calibration data: no span to compare with
        ratio = (max(s.max, hi) - min(s.min, lo)) / (hi - lo)  # how much wider a range they need
        if ratio >= WARN_RATIO:
            past.append({"tensor": name, "ratio": round(ratio, 3), "held_out": [s.min, s.max],
                         "calibration": [lo, hi]})
    past.sort(key=lambda o: (-o["ratio"], o["tensor"]))
    return {"tensors": len(stats), "samples": min(SAMPLES, len(held_out)), "past_range": past}


def coverage_warning(coverage: dict[str, Any]) -> str | None:
    """One line naming the worst tensors when held-out data runs past calibrated ranges, else None."""
    past = coverage.get("past_range") or []
    if not past:
        return None
    worst = ", ".join(f"'{o['tensor']}' {o['ratio']:.1f}×" for o in past[:SHOWN])
    more = f" and {len(past) - SHOWN} more" if len(past) > SHOWN else ""
    return (f"range coverage: on the held-out data {len(past)} of {coverage['tensors']} activations span "
            f"{WARN_RATIO:g}× or more of what they spanned on the calibration samples ({worst}{more}): the "
            "calibration samples do not cover the data the model was checked on, and clipping there is the "
            "error. Calibrate on samples like the data it will see (or add them); no range method fixes this")
