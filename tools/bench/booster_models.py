"""Model variants for the booster benchmark, exported to ONNX once per work folder.

``mobilenetv2_relu_spread``: the zoo's MobileNetV2 with ReLU instead of ReLU6 (as the DFQ paper does
for CLE) and the per-channel weight-range imbalance that training leaves in depthwise layers: each
depthwise output channel i is scaled by cᵢ (log-uniform over ``10^±spread``, folded into its BN) and
the project conv's input channel i by 1/cᵢ. ReLU commutes with positive scales, so the function equals
the plain ReLU network; only the ranges differ — what CLE undoes. ``small_transformer_outliers``: the
zoo's small transformer with a few LayerNorm channels scaled up (gamma and beta ×``factor``), the
activation-outlier pattern of trained transformers that SmoothQuant targets.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

from dsqc.models.export import export_onnx
from dsqc.models.zoo import InvertedResidual, mobilenetv2_like, small_transformer


def _relu6_to_relu(module: nn.Module) -> None:
    for name, child in module.named_children():
        if isinstance(child, nn.ReLU6):
            setattr(module, name, nn.ReLU())
        else:
            _relu6_to_relu(child)


def mobilenetv2_relu_spread(seed: int = 0, spread: float = 1.5) -> tuple[nn.Module, torch.Tensor]:
    module, example = mobilenetv2_like(seed)
    _relu6_to_relu(module)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for block in (m for m in module.modules() if isinstance(m, InvertedResidual)):
            dw, project = block.body[-2], block.body[-1]
            bn, conv = dw[1], project[0]
            c = 10 ** (torch.rand(bn.weight.shape[0], generator=gen) * 2 * spread - spread)
            bn.weight.mul_(c)
            bn.bias.mul_(c)
            conv.weight.div_(c.view(1, -1, 1, 1))
    return module.eval(), example


def small_transformer_outliers(seed: int = 0, channels: int = 4, factor: float = 30.0
                               ) -> tuple[nn.Module, torch.Tensor]:
    module, example = small_transformer(seed)
    gen = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for norm in (m for m in module.modules() if isinstance(m, nn.LayerNorm)):
            picked = torch.randperm(norm.weight.shape[0], generator=gen)[:channels]
            norm.weight[picked] *= factor
            norm.bias[picked] *= factor
    return module.eval(), example


VARIANTS: dict[str, Callable[[], tuple[nn.Module, torch.Tensor]]] = {
    "mobilenetv2_relu_spread": mobilenetv2_relu_spread,
    "small_transformer_outliers": small_transformer_outliers}


def variant_path(name: str, folder: Path) -> Path:
    """``folder/<name>.onnx``, exported on first use."""
    path = folder / f"{name}.onnx"
    if not path.exists():
        module, example = VARIANTS[name]()
        export_onnx(module, example, path, input_names=["input"], output_names=["output"])
    return path
