"""A build's calibration and held-out samples, and the artifacts' name."""

from __future__ import annotations

import logging
from pathlib import Path

import onnx

from dsqc.calibration.data import ImagePreprocess, SampleSet, fixed_batch, load_samples, model_inputs
from dsqc.driver.build_types import BuildRequest
from dsqc.errors import CalibrationError
from dsqc.quant.recipe import Recipe

log = logging.getLogger(__name__)

RANDOM_WARNING = ("CALIBRATED ON RANDOM DATA (--calib random): scales and the accuracy numbers in this "
                  "report say nothing about real inputs")


def load_data(request: BuildRequest, fp32: onnx.ModelProto, recipe: Recipe) -> tuple[SampleSet, SampleSet]:
    """Calibration samples and held-out evaluation samples (``--eval-data`` or a split), in whole
    batches of the model's batch size where the model fixes it (every later run then uses it)."""
    calib, held_out = _load_sets(request, fp32, recipe)
    batch = fixed_batch(model_inputs(fp32))
    if batch is not None and batch != request.calib_batch:
        log.info("the model fixes its batch size to %d: calibration and verification run batches of %d",
                 batch, batch)
    return calib.for_model_batch(batch, "calibration"), held_out.for_model_batch(batch, "evaluation")


def _load_sets(request: BuildRequest, fp32: onnx.ModelProto, recipe: Recipe) -> tuple[SampleSet, SampleSet]:
    if not request.calib:
        raise CalibrationError("int8 needs calibration data: --calib DATA (npz, folder, module:function, "
                               "mnist), or --precision fp32")
    inputs = model_inputs(fp32)
    image = recipe.calibration.get("image")
    preprocess = ImagePreprocess.from_dict(image) if image else None
    if request.eval_data:
        calib = load_samples(request.calib, inputs, request.calib_samples, preprocess)
        held_out = load_samples(request.eval_data, inputs, request.eval_samples, preprocess, purpose="eval")
        return calib, held_out
    if request.calib == "mnist":
        calib = load_samples("mnist", inputs, request.calib_samples)
        return calib, load_samples("mnist", inputs, request.eval_samples, purpose="eval")
    samples = load_samples(request.calib, inputs, None, preprocess)
    n_eval = min(request.eval_samples, len(samples) // 5)
    if n_eval < 1:
        raise CalibrationError(f"{request.calib}: {len(samples)} samples are too few to calibrate and "
                               "verify; give at least 5 or pass --eval-data")
    calib, held_out = samples.split(n_eval)
    return calib.take(request.calib_samples), held_out


def model_name(path: Path) -> str:
    """Artifact stem: the model file's stem without any ``.fp32``/``.int8`` suffix."""
    stem = path.name
    for suffix in (".onnx", ".fp32", ".int8"):
        stem = stem.removesuffix(suffix)
    return stem or "model"
