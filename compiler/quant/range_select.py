"""``--method select`` (the default): min/max or percentile ranges, whichever moves the FP32 output less
(percentile by a margin).

Neither method wins everywhere on real weights (tools/bench/REAL.md, held-out SQNR dB, min/max →
percentile): SiLU/ReLU6 CNNs with rare huge activations gain from clipping (NudeNet YOLOv8n 24.0 →
28.8, Silero VAD 20.6 → 29.6, EfficientNet-Lite0 18.7 → 20.8), while transformers, whose rare large
values carry the signal, lose (MiniLM 16.6 → 10.9), and so do ReLU ResNet-18 graphs (random init
23.2 → 20.8, distilled 26.1 → 16.8).

Each candidate is scored as the build would write it (bias-corrected) and in the runtime verification
uses (``TargetProfile.verify_fused``); scoring the bare plan in unoptimized ORT picked percentile on the
random-init EfficientNet-B0 graph (6.1 vs 8.0 dB there; as built 7.5 vs 7.8), which measures 1.9 dB held
out against min/max's 5.2. Each output and each scale group of an output's channels
(``metrics.judged_parts``) is scored, the worst counts. Scored over whole outputs, select picked min/max
on every real-weight case (NudeNet's box pixels hide its class scores); scored per part, NudeNet's class
scores measure 1.3 dB with min/max and 5.7 dB with percentile on the unseen calibration samples, so it
takes percentile (held out: class scores -3.1 → 9.2 dB, mAP@0.5 vs FP32 0.41 → 0.72). Its two trial
calibrations cost about half a build, more with bias correction (``--no-latency``, 2 cores: ResNet-18
graph 7.4 → 10.9 s, NudeNet 7.0 → 11.4 s; EfficientNet-B0 graph 31 → 43 s with both bias-corrected,
measured before the two candidates shared one ``BiasCorrector``'s FP32 input means).

The choice is cross-fitted on calibration data only (never the held-out samples verification reports
on): both candidates calibrate on all but the last ``MEASURE_SAMPLES`` calibration samples and are
measured on those last ones, which neither range saw. Measured on the samples that set the ranges,
min/max always looks better than it is: it never clips them (NudeNet: 24.1 vs 24.2 dB there, 24.0 vs
28.8 dB held out). Unseen samples of the calibration's own photos still favour clipping more than
other photos do, hence ``CLIPPING_MARGIN_DB`` (Lite0's gain, +0.7 dB there, falls under it). The
chosen method then calibrates on every calibration sample, as any build does.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable
from dataclasses import dataclass, field

import onnx

from dsqc.calibration.data import SampleSet
from dsqc.metrics import judged_parts, sqnr_db, take_parts
from dsqc.quant.recipe import Recipe
from dsqc.verify import run_batches, session

log = logging.getLogger(__name__)
SELECT = "select"
CANDIDATES = ("minmax", "percentile")
MEASURE_SAMPLES = 16
# percentile must beat min/max by this much on the unseen calibration samples: clipped ranges carry over
# worse to inputs unlike the calibration set (ResNet-18 graph: +0.3 dB on unseen crops of the calibration
# photos, -2.1 dB on other photos; NudeNet +1.4 there and +4.8 on other photos)
CLIPPING_MARGIN_DB = 1.0


@dataclass
class Selection:
    """The candidates' worst-output SQNR on the measuring samples and the method kept."""

    chosen: str
    sqnr_db: dict[str, float] = field(default_factory=dict)
    fit_samples: int = 0
    samples: int = 0

    def to_dict(self) -> dict[str, object]:
        scores = {k: round(v, 3) for k, v in self.sqnr_db.items()}
        return {"chosen": self.chosen, "candidates_sqnr_db": scores, "fit_samples": self.fit_samples,
                "samples": self.samples}


def select_method(fp32: onnx.ModelProto, recipe: Recipe, calib: SampleSet, batch_size: int,
                  quantize: Callable[[Recipe, SampleSet], onnx.ModelProto],
                  fused: bool = True) -> tuple[Recipe, Selection]:
    """The recipe with the better candidate method: percentile only where it wins by
    ``CLIPPING_MARGIN_DB``, else min/max (the older default, robust to inputs the calibration lacked).
    ``quantize(recipe, samples)`` is one candidate's QDQ model from ``samples`` alone, as the build makes
    it (bias correction included); ``fused`` runs it as verification does (``TargetProfile.verify_fused``)."""
    n = min(MEASURE_SAMPLES, len(calib) // 2)
    n -= n % (calib.fixed_batch or 1)  # whole batches where the model pins its batch size
    # one sample (or one fixed batch): nothing to cross-fit, both measured where they were fitted
    fit, measure = calib.split(n) if n else (calib, calib)
    batches = list(measure.batches(batch_size))
    outputs = run_batches(session(fp32), batches)
    parts = judged_parts(outputs)  # each output and each scale group of its channels
    reference = take_parts(outputs, parts)
    selection = Selection(chosen=CANDIDATES[0], fit_samples=len(fit), samples=len(measure))
    for method in CANDIDATES:
        model = quantize(dataclasses.replace(recipe, method=method), fit)
        got = take_parts(run_batches(session(model, optimize=fused), batches), parts)
        selection.sqnr_db[method] = min(sqnr_db(reference[name], got[name]) for name in reference)
        log.info("range method %s: worst output SQNR %.2f dB on %d calibration samples it did not fit",
                 method, selection.sqnr_db[method], len(measure))
    scores = selection.sqnr_db
    clipping_wins = scores["percentile"] >= scores["minmax"] + CLIPPING_MARGIN_DB
    selection.chosen = "percentile" if clipping_wins else "minmax"
    return dataclasses.replace(recipe, method=selection.chosen), selection
