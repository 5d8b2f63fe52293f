"""Activation histograms for the report: the calibration data's distribution of the most sensitive
quantized activations, with the range the plan chose (the clipping range) beside it.

One extra ORT pass of at most ``SAMPLES`` calibration samples through the calibration runner, observing
every quantized activation on the same power-of-two histogram grid calibration uses. The ranking is the
sensitivity analysis' when the build computed one (``--accuracy-budget``); otherwise each tensor's own
quantization SQNR under its spec, estimated from the histogram (lowest first).
"""

from __future__ import annotations

import logging
import math
from typing import Any

import numpy as np
import onnx

from dsqc.calibration.data import SampleSet
from dsqc.calibration.histogram import GridHistogram
from dsqc.calibration.observers import HistogramObserver, Observer
from dsqc.calibration.runner import calibrate
from dsqc.errors import CalibrationError
from dsqc.quant.spec import QuantPlan, QuantSpec

log = logging.getLogger(__name__)

SAMPLES = 32
SHOWN = 6
DISPLAY_BINS = 64


def activation_histograms(model: onnx.ModelProto, plan: QuantPlan, calib: SampleSet, batch_size: int,
                          ranked_nodes: list[str] | None = None, shown: int = SHOWN) -> dict[str, Any]:
    """``{"ranking": how, "tensors": [...]}``: the ``shown`` most sensitive activations' histograms."""
    consts = {t.name for t in model.graph.initializer}
    specs = {n: s for n, s in plan.tensors.items() if n not in consts and s.axis is None}
    if not specs or len(calib) == 0:
        return {"ranking": "none", "tensors": []}
    observers: dict[str, Observer] = {}
    try:
        calibrate(model, list(specs), calib.take(SAMPLES), method="percentile", batch_size=batch_size,
                  progress=False, keep_observers=observers)
    except CalibrationError as exc:  # the report goes without histograms rather than fail the build
        log.warning("activation histograms skipped: %s", exc)
        return {"ranking": "none", "tensors": []}
    hists = {n: o.hist for n, o in observers.items() if isinstance(o, HistogramObserver) and o.hist.count}
    estimates = {n: _estimated_sqnr(h, specs[n]) for n, h in hists.items()}
    order, how = _rank(model, hists, estimates, ranked_nodes)
    tensors = [_display(name, hists[name], specs[name], estimates[name]) for name in order[:shown]]
    return {"ranking": how, "samples": min(SAMPLES, len(calib)), "tensors": tensors}


def _rank(model: onnx.ModelProto, hists: dict[str, GridHistogram], estimates: dict[str, float],
          ranked_nodes: list[str] | None) -> tuple[list[str], str]:
    by_estimate = sorted(hists, key=lambda n: (estimates[n], n))
    if not ranked_nodes:
        return by_estimate, "lowest estimated tensor SQNR under its spec (calibration histogram)"
    inputs = {node.name: [t for t in node.input if t in hists] for node in model.graph.node}
    order = list(dict.fromkeys(t for name in ranked_nodes for t in inputs.get(name, [])))
    rest = [n for n in by_estimate if n not in order]
    return order + rest, "sensitivity analysis (inputs of the top nodes)"


def _estimated_sqnr(hist: GridHistogram, spec: QuantSpec) -> float:
    """SQNR of quantizing the histogram's bin centres with ``spec`` (rounding and clipping)."""
    edges = hist.edges()
    centres = (edges[:-1] + edges[1:]) / 2
    counts = hist.counts.astype(np.float64)
    scale, zero = float(spec.scale), int(spec.zero_point)
    q = np.clip(np.rint(centres / scale) + zero, spec.qmin, spec.qmax)
    noise = float(np.sum(counts * (centres - (q - zero) * scale) ** 2))
    signal = float(np.sum(counts * centres ** 2))
    return math.inf if noise == 0 else 10 * math.log10(max(signal, 1e-30) / noise)


def _display(name: str, hist: GridHistogram, spec: QuantSpec, estimate: float) -> dict[str, Any]:
    """A coarse copy for the report: ``DISPLAY_BINS`` bins over the data and the clipping range."""
    scale, zero = float(spec.scale), int(spec.zero_point)
    clip = ((spec.qmin - zero) * scale, (spec.qmax - zero) * scale)
    lo, hi = min(hist.min, clip[0]), max(hist.max, clip[1])
    if hi <= lo:
        hi = lo + 1.0
    edges = hist.edges()
    centres = (edges[:-1] + edges[1:]) / 2
    used = hist.counts > 0
    index = np.clip(((centres[used] - lo) / (hi - lo) * DISPLAY_BINS).astype(np.int64), 0, DISPLAY_BINS - 1)
    counts = np.bincount(index, weights=hist.counts[used], minlength=DISPLAY_BINS)
    outside = hist.counts[(centres < clip[0]) | (centres > clip[1])].sum()
    return {"tensor": name, "min": float(hist.min), "max": float(hist.max), "range": [lo, hi],
            "clip": [float(clip[0]), float(clip[1])], "scale": scale, "zero_point": zero, "dtype": spec.dtype,
            "counts": [int(c) for c in counts], "values": int(hist.count),
            "clipped_fraction": float(outside) / max(hist.count, 1),
            "sqnr_db_estimate": estimate if math.isfinite(estimate) else "inf"}
