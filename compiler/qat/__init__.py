"""Quantization-aware training on a dsqc plan (needs torch: ``pip install 'dsqc[torch]'``).

``prepare(module, plan_or_build_folder, example)`` → the module with fake quantization on exactly the
plan's tensors, at the plan's calibrated scales (``learn_scales=True``: LSQ); train it with your own
loop; ``export(module, example, "model.qat.onnx")`` → a QDQ ONNX with the trained scales, which
``dsqc build`` keeps.
"""

from dsqc.qat.export import export, float_copy
from dsqc.qat.fake_quant import BiasFakeQuantize, FakeQuantize, quantizers, set_fake_quant
from dsqc.qat.locate import QatError
from dsqc.qat.prepare import prepare

__all__ = ["BiasFakeQuantize", "FakeQuantize", "QatError", "export", "float_copy", "prepare", "quantizers",
           "set_fake_quant"]
