"""The ``onnx`` target: a QDQ ONNX model for ONNX Runtime (or the optimized FP32 model)."""

from .backend import OnnxBackend

__all__ = ["OnnxBackend"]
