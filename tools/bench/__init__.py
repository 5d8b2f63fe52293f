"""Side-by-side benchmark of dsqc and ONNX Runtime's ``quantize_static`` (``python -m tools.bench``)."""
