"""The ``trt`` target: TensorRT explicit-quantization ONNX, calibration cache, engine build."""

from .backend import TrtBackend, TrtOptions
from .checker import Finding, check_trt, format_findings

__all__ = ["Finding", "TrtBackend", "TrtOptions", "check_trt", "format_findings"]
