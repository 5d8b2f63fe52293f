"""Numerical error between a reference output and a quantized one."""

from __future__ import annotations

import numpy as np


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref−test)²)."""
    ref64, err = ref.astype(np.float64), ref.astype(np.float64) - test.astype(np.float64)
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref64 * ref64))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def cosine(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean cosine similarity between matching rows (last axis flattened per sample)."""
    a = ref.reshape(ref.shape[0], -1).astype(np.float64) if ref.ndim > 1 else ref[None].astype(np.float64)
    b = test.reshape(a.shape).astype(np.float64)
    denom = np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1)
    cos = np.where(denom > 0, np.sum(a * b, axis=1) / np.maximum(denom, 1e-30), 1.0)
    return float(np.mean(cos))


def mse(ref: np.ndarray, test: np.ndarray) -> float:
    return float(np.mean((ref.astype(np.float64) - test.astype(np.float64)) ** 2))


def kl_divergence(ref: np.ndarray, test: np.ndarray) -> float:
    """Mean KL(softmax(ref) ‖ softmax(test)) over the last axis — meaningful for logits."""
    p, q = _log_softmax(ref), _log_softmax(test)
    return float(np.mean(np.sum(np.exp(p) * (p - q), axis=-1)))


def top1_agreement(ref: np.ndarray, test: np.ndarray) -> float:
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(test, axis=-1)))


def output_metrics(ref: np.ndarray, test: np.ndarray) -> dict[str, float]:
    return {"sqnr_db": sqnr_db(ref, test), "cosine": cosine(ref, test), "mse": mse(ref, test),
            "kl": kl_divergence(ref, test), "max_abs_diff": float(np.max(np.abs(ref - test), initial=0.0))}


def _log_softmax(x: np.ndarray) -> np.ndarray:
    x = x.astype(np.float64)
    shifted = x - x.max(axis=-1, keepdims=True)
    return shifted - np.log(np.sum(np.exp(shifted), axis=-1, keepdims=True))
