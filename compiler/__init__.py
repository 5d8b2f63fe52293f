"""dsqc — an offline quantization compiler for ONNX models (TensorRT, TFLite, HLS, ONNX)."""

__version__ = "0.1.0"
