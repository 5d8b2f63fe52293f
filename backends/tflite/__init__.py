"""The ``tflite`` target: int8 ``.tflite`` flatbuffers for LiteRT/XNNPACK, written without TensorFlow."""

from .backend import TfliteBackend

__all__ = ["TfliteBackend"]
