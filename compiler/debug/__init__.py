"""``dsqc debug``: FP32 and the quantized model side by side, error per quantized tensor."""
