"""Small reference PyTorch networks for dsqc tests and benchmarks.

Every factory returns ``(module, example_input)`` with the module in eval mode and a
deterministic initialisation (``torch.manual_seed(seed)``). BatchNorm running statistics and
all norm affine parameters are randomised, so BatchNorm folding is genuinely exercised and the
TorchScript exporter does not deduplicate identical norm parameters into ``Identity`` nodes.

This module needs torch (the ``torch`` extra); nothing else in dsqc may import it.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

Factory = Callable[[], tuple[nn.Module, torch.Tensor]]

_BN = (nn.BatchNorm1d, nn.BatchNorm2d)


def _randomize_norms(module: nn.Module) -> None:
    """Give every BatchNorm/LayerNorm non-trivial statistics and affine parameters."""
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, _BN) and m.running_mean is not None and m.running_var is not None:
                m.running_mean.normal_(0.0, 0.1)
                m.running_var.uniform_(0.5, 1.5)
            if isinstance(m, (*_BN, nn.LayerNorm)):
                m.weight.uniform_(0.5, 1.5)
                m.bias.normal_(0.0, 0.1)


def _finalize(module: nn.Module, example: torch.Tensor) -> tuple[nn.Module, torch.Tensor]:
    _randomize_norms(module)
    return module.eval(), example


def conv_bn(
    cin: int,
    cout: int,
    k: int = 3,
    stride: int = 1,
    groups: int = 1,
    act: type[nn.Module] | None = nn.ReLU,
) -> nn.Sequential:
    """Conv (no bias) → BatchNorm → optional activation, 'same'-style padding."""
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if act is not None:
        layers.append(act())
    return nn.Sequential(*layers)


# --------------------------------------------------------------------------------------------
# CNN building blocks
# --------------------------------------------------------------------------------------------


class BasicBlock(nn.Module):
    """ResNet basic block: Conv-BN-ReLU-Conv-BN + shortcut, then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, act=None))
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = conv_bn(cin, cout, 1, stride, act=None)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise (ReLU6), 1x1 linear project, residual."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.ReLU6))
        layers += [
            conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
            conv_bn(hidden, cout, 1, act=None),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class SqueezeExcite(nn.Module):
    """GlobalAvgPool → Conv → SiLU → Conv → Sigmoid → Mul."""

    def __init__(self, channels: int, squeezed: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.reduce = nn.Conv2d(channels, squeezed, 1)
        self.act = nn.SiLU()
        self.expand = nn.Conv2d(squeezed, channels, 1)
        self.gate = nn.Sigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = self.gate(self.expand(self.act(self.reduce(self.pool(x)))))
        return x * s


class MBConv(nn.Module):
    """EfficientNet MBConv: expand (SiLU), depthwise (SiLU), squeeze-excite, project, residual."""

    def __init__(self, cin: int, cout: int, k: int, stride: int, expand: int) -> None:
        super().__init__()
        hidden = cin * expand
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, act=nn.SiLU))
        layers += [
            conv_bn(hidden, hidden, k, stride, groups=hidden, act=nn.SiLU),
            SqueezeExcite(hidden, max(1, cin // 4)),
            conv_bn(hidden, cout, 1, act=None),
        ]
        self.body = nn.Sequential(*layers)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.body(x)
        return x + y if self.residual else y


class ClassifierHead(nn.Module):
    """GlobalAvgPool → Flatten → Linear."""

    def __init__(self, channels: int, classes: int) -> None:
        super().__init__()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.fc = nn.Linear(channels, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.flatten(self.pool(x)))


# --------------------------------------------------------------------------------------------
# Transformer building blocks
# --------------------------------------------------------------------------------------------


class EncoderLayer(nn.Module):
    """Post-norm (BERT-style) encoder layer with explicit MatMul attention and GELU FFN.

    The sequence length is fixed at construction so head split/merge export as plain Reshapes
    with constant shapes ``[-1, seq, heads, d_head]`` (batch stays dynamic).
    """

    def __init__(self, seq: int, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.seq, self.d, self.heads, self.dh = seq, d, heads, d // heads
        self.q, self.k, self.v = nn.Linear(d, d), nn.Linear(d, d), nn.Linear(d, d)
        self.out = nn.Linear(d, d)
        self.ln1 = nn.LayerNorm(d)
        self.ff1, self.act, self.ff2 = nn.Linear(d, ffn), nn.GELU(), nn.Linear(ffn, d)
        self.ln2 = nn.LayerNorm(d)

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(-1, self.seq, self.heads, self.dh).transpose(1, 2)

    def attention(self, x: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.q(x)), self._split(self.k(x)), self._split(self.v(x))
        scores = torch.matmul(q, k.transpose(-2, -1)) * (1.0 / math.sqrt(self.dh))
        ctx = torch.matmul(torch.softmax(scores, dim=-1), v)
        return self.out(ctx.transpose(1, 2).reshape(-1, self.seq, self.d))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.ln1(x + self.attention(x))
        return self.ln2(x + self.ff2(self.act(self.ff1(x))))


class Encoder(nn.Module):
    """Stack of encoder layers over float token embeddings ``[batch, seq, d]``."""

    def __init__(self, layers: int, seq: int, d: int, heads: int, ffn: int) -> None:
        super().__init__()
        self.layers = nn.Sequential(*(EncoderLayer(seq, d, heads, ffn) for _ in range(layers)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.layers(x)


# --------------------------------------------------------------------------------------------
# Zoo factories
# --------------------------------------------------------------------------------------------


def resnet_block(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """One ResNet basic block (identity shortcut), 16 channels at 16x16."""
    torch.manual_seed(seed)
    return _finalize(BasicBlock(16, 16), torch.randn(1, 16, 16, 16))


def inverted_residual(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """One MobileNetV2 inverted residual block (expand 6, stride 1), 16 channels at 16x16."""
    torch.manual_seed(seed)
    return _finalize(InvertedResidual(16, 16, 1, 6), torch.randn(1, 16, 16, 16))


def convtranspose_decoder(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """ConvTranspose2d-BN-ReLU then ConvTranspose2d(stride 2)-BN: [1,16,8,8] → [1,8,16,16]."""
    torch.manual_seed(seed)
    module = nn.Sequential(
        nn.ConvTranspose2d(16, 16, 3, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.ConvTranspose2d(16, 8, 4, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(8),
    )
    return _finalize(module, torch.randn(1, 16, 8, 8))


def tiny_transformer(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """One encoder layer: seq 16, d 64, 4 heads, FFN 256."""
    torch.manual_seed(seed)
    return _finalize(Encoder(1, 16, 64, 4, 256), torch.randn(1, 16, 64))


def small_transformer(seed: int = 0) -> tuple[nn.Module, torch.Tensor]:
    """Four encoder layers: seq 32, d 128, 4 heads, FFN 512."""
    torch.manual_seed(seed)
    return _finalize(Encoder(4, 32, 128, 4, 512), torch.randn(1, 32, 128))


def resnet18_like(seed: int = 0, classes: int = 1000) -> tuple[nn.Module, torch.Tensor]:
    """ResNet-18 topology (7x7/2 stem, max-pool, 4 stages of 2 basic blocks) at 3x64x64."""
    torch.manual_seed(seed)
    layers: list[nn.Module] = [conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1)]
    cin = 64
    for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
        layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout)]
        cin = cout
    layers.append(ClassifierHead(cin, classes))
    return _finalize(nn.Sequential(*layers), torch.randn(1, 3, 64, 64))


def _make_divisible(v: float, divisor: int = 8) -> int:
    new = max(divisor, int(v + divisor / 2) // divisor * divisor)
    return new + divisor if new < 0.9 * v else new


# (expand, channels, repeats, stride) — torchvision's MobileNetV2 settings.
_MBV2 = (
    (1, 16, 1, 1),
    (6, 24, 2, 2),
    (6, 32, 3, 2),
    (6, 64, 4, 2),
    (6, 96, 3, 1),
    (6, 160, 3, 2),
    (6, 320, 1, 1),
)


def mobilenetv2_like(
    seed: int = 0, width: float = 0.5, classes: int = 1000
) -> tuple[nn.Module, torch.Tensor]:
    """MobileNetV2 topology at width 0.5 (last conv 1280 channels) at 3x96x96."""
    torch.manual_seed(seed)
    cin = _make_divisible(32 * width)
    layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.ReLU6)]
    for t, c, n, s in _MBV2:
        cout = _make_divisible(c * width)
        for i in range(n):
            layers.append(InvertedResidual(cin, cout, s if i == 0 else 1, t))
            cin = cout
    last = _make_divisible(1280 * max(1.0, width))
    layers += [conv_bn(cin, last, 1, act=nn.ReLU6), ClassifierHead(last, classes)]
    return _finalize(nn.Sequential(*layers), torch.randn(1, 3, 96, 96))


# (expand, channels, repeats, stride, kernel) — EfficientNet-B0 stages.
_B0 = (
    (1, 16, 1, 1, 3),
    (6, 24, 2, 2, 3),
    (6, 40, 2, 2, 5),
    (6, 80, 3, 2, 3),
    (6, 112, 3, 1, 5),
    (6, 192, 4, 2, 5),
    (6, 320, 1, 1, 3),
)


def efficientnet_like(
    seed: int = 0, width: float = 0.5, classes: int = 1000
) -> tuple[nn.Module, torch.Tensor]:
    """EfficientNet-B0 stage layout (MBConv + SE, SiLU) at width 0.5, head 1280, 3x96x96."""
    torch.manual_seed(seed)
    cin = _make_divisible(32 * width)
    layers: list[nn.Module] = [conv_bn(3, cin, 3, 2, act=nn.SiLU)]
    for t, c, n, s, k in _B0:
        cout = _make_divisible(c * width)
        for i in range(n):
            layers.append(MBConv(cin, cout, k, s if i == 0 else 1, t))
            cin = cout
    layers += [conv_bn(cin, 1280, 1, act=nn.SiLU), ClassifierHead(1280, classes)]
    return _finalize(nn.Sequential(*layers), torch.randn(1, 3, 96, 96))


ZOO: dict[str, Factory] = {
    "resnet_block": resnet_block,
    "inverted_residual": inverted_residual,
    "convtranspose_decoder": convtranspose_decoder,
    "tiny_transformer": tiny_transformer,
    "resnet18_like": resnet18_like,
    "mobilenetv2_like": mobilenetv2_like,
    "efficientnet_like": efficientnet_like,
    "small_transformer": small_transformer,
}

#: Zoo entries whose exported graph carries BatchNormalization nodes.
HAS_BATCHNORM: frozenset[str] = frozenset(
    {
        "resnet_block",
        "inverted_residual",
        "convtranspose_decoder",
        "resnet18_like",
        "mobilenetv2_like",
        "efficientnet_like",
    }
)
