"""Real-weight benchmark: outside models (torchvision graphs with BatchNorm statistics from real photos,
EfficientNet-Lite0 with ImageNet weights, NudeNet's YOLOv8n detector, Silero VAD, MiniLM, the MNIST CNN)
on real inputs; dsqc against ONNX Runtime's best ``quantize_static`` configuration.

``python -m tools.bench.real.prepare`` (torch/torchvision venv) writes the models and inputs;
``python -m tools.bench.real`` (the project's venv) benchmarks them.
"""
