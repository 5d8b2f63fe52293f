"""Fake quantization in torch with ONNX's semantics: ``(clamp(round_half_even(x / s) + z) - z) · s``.

``FakeQuantize`` is the forward of a QuantizeLinear→DequantizeLinear pair for one ``QuantSpec``
(per tensor or per channel), with a straight-through estimator for ``x``. With ``learnable`` the
scale is trained as in LSQ (Esser et al. 2020): the rounding's gradient passes straight through and
the scale's gradient is scaled by ``1 / sqrt(elements per scale · qmax)``; the parameter is the scale's
logarithm (as in TQT, Jain et al. 2019), so it stays positive and an optimizer step changes it by a
ratio, whatever its size (Adam at 2e-4 pushed 8e-4 weight scales below zero in 10 steps otherwise).
Zero points stay fixed (integers). ``BiasFakeQuantize`` rounds an int32 bias to ``s_in · s_w``.
"""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import torch
from torch import nn

from dsqc.quant.spec import QuantSpec

_MIN_SCALE = 1e-12


def _round_ste(x: torch.Tensor) -> torch.Tensor:
    """Round half to even forward (ONNX QuantizeLinear's rule); identity gradient."""
    return (torch.round(x) - x).detach() + x


def _grad_scaled(value: torch.Tensor, factor: float) -> torch.Tensor:
    """``value`` forward, gradient multiplied by ``factor`` (LSQ's step-size gradient scale)."""
    scaled = value * factor
    return (value - scaled).detach() + scaled


class FakeQuantize(nn.Module):
    """QuantizeLinear→DequantizeLinear of one spec. ``axis`` is the torch tensor's channel axis."""

    zero_point: torch.Tensor
    fixed_scale: torch.Tensor
    log_scale: nn.Parameter

    def __init__(self, spec: QuantSpec, learnable: bool = False, axis: int | None = None) -> None:
        super().__init__()
        if spec.block_size:
            raise ValueError("blockwise (int4 block) specs are not supported by dsqc.qat")
        self.spec_template = dataclasses.replace(spec)
        self.axis = spec.axis if axis is None else axis
        self.qmin, self.qmax = spec.qmin, spec.qmax
        self.learnable = learnable
        self.enabled = True
        scale = torch.tensor(np.asarray(spec.scale, np.float32))
        if learnable:
            self.log_scale = nn.Parameter(torch.log(scale))
        else:
            self.register_buffer("fixed_scale", scale)
        self.register_buffer("zero_point", torch.tensor(np.asarray(spec.zero_point, np.float32)))

    def _shaped(self, value: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        if self.axis is None:
            return value
        view = [1] * x.dim()
        view[self.axis] = -1
        return value.reshape(view)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return x
        scale = self.scale()
        if self.learnable:
            per_scale = x.numel() / max(scale.numel(), 1)
            scale = _grad_scaled(scale, 1.0 / math.sqrt(per_scale * max(abs(self.qmax), 1)))
        s, z = self._shaped(scale, x), self._shaped(self.zero_point, x)
        q = torch.clamp(_round_ste(x / s) + z, self.qmin, self.qmax)
        return (q - z) * s

    def scale(self) -> torch.Tensor:
        """The current scale (a function of the learned log-scale, or the fixed buffer)."""
        raw = torch.exp(self.log_scale) if self.learnable else self.fixed_scale
        return raw.clamp_min(_MIN_SCALE)

    def spec(self) -> QuantSpec:
        """The spec with the current (trained) scale: dtype, zero point, axis and range as planned."""
        scale = self.scale().detach().cpu().numpy().astype(np.float32)
        return dataclasses.replace(self.spec_template, scale=scale)

    def extra_repr(self) -> str:
        kind = "per tensor" if self.axis is None else f"per channel (axis {self.axis})"
        return f"{self.spec_template.dtype} [{self.qmin}, {self.qmax}] {kind}, learnable={self.learnable}"


class BiasFakeQuantize(nn.Module):
    """int32 bias on the grid ``s_in · s_w`` of the layer's input and weight quantizers."""

    def __init__(self, input_quant: FakeQuantize, weight_quant: FakeQuantize) -> None:
        super().__init__()
        self.input_quant = input_quant
        self.weight_quant = weight_quant
        self.enabled = True

    def forward(self, bias: torch.Tensor) -> torch.Tensor:
        if not self.enabled:
            return bias
        scale = (self.input_quant.scale() * self.weight_quant.scale()).detach().clamp_min(_MIN_SCALE)
        scale = scale.expand_as(bias) if scale.dim() == 0 else scale
        q = torch.clamp(_round_ste(bias / scale), -(2**31), 2**31 - 1)
        return q * scale


def quantizers(module: nn.Module) -> list[FakeQuantize | BiasFakeQuantize]:
    """Every fake-quant module inside ``module`` (shared ones once)."""
    seen: dict[int, FakeQuantize | BiasFakeQuantize] = {}
    for sub in module.modules():
        if isinstance(sub, FakeQuantize | BiasFakeQuantize):
            seen.setdefault(id(sub), sub)
    return list(seen.values())


def set_fake_quant(module: nn.Module, enabled: bool) -> None:
    """Turn every fake-quant of ``module`` on or off (off: the FP32 function of the same weights)."""
    for quant in quantizers(module):
        quant.enabled = enabled
