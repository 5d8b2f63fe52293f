"""Calibration: load sample data, stream it through the FP32 model, observe tensor ranges."""

from dsqc.calibration.data import ImagePreprocess, InputSpec, SampleSet, load_samples, model_inputs
from dsqc.calibration.observers import (
    EntropyObserver,
    MinMaxObserver,
    MseObserver,
    Observer,
    PercentileObserver,
    make_observer,
)
from dsqc.calibration.runner import TensorStats, calibrate

__all__ = [
    "EntropyObserver",
    "ImagePreprocess",
    "InputSpec",
    "MinMaxObserver",
    "MseObserver",
    "Observer",
    "PercentileObserver",
    "SampleSet",
    "TensorStats",
    "calibrate",
    "load_samples",
    "make_observer",
    "model_inputs",
]
