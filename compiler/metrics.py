"""Numerical error between a reference output and a quantized one."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np


def sqnr_db(ref: np.ndarray, test: np.ndarray) -> float:
    """Signal-to-quantization-noise ratio in dB: 10·log10(Σref² / Σ(ref−test)²)."""
    ref64, err = ref.astype(np.float64), ref.astype(np.float64) - test.astype(np.float64)
    noise = float(np.sum(err * err))
    signal = float(np.sum(ref64 * ref64))
    if noise == 0.0:
        return float("inf")
    return 10.0 * np.log10(max(signal, 1e-30) / noise)


def cosine(ref: np.ndarray, test: np.ndarray, energy_weighted: bool = False) -> float:
    """Mean cosine similarity between matching rows (all but axis 0 flattened per sample); an all-zero
    reference row counts as agreement, an all-zero test row under a non-zero reference as none (0).
    ``energy_weighted``: each row weighs its reference's sum of squares (for :func:`group_cosine`)."""
    a = ref.reshape(ref.shape[0], -1).astype(np.float64) if ref.ndim > 1 else ref[None].astype(np.float64)
    b = test.reshape(a.shape).astype(np.float64)
    energy = np.sum(a * a, axis=1)
    denom = np.sqrt(energy) * np.linalg.norm(b, axis=1)
    none = np.where(energy > 0, 0.0, 1.0)  # a zero row: agreement only where the reference is zero too
    cos = np.where(denom > 0, np.sum(a * b, axis=1) / np.maximum(denom, 1e-30), none)
    total = float(np.sum(energy))
    return float(np.sum(energy * cos) / total) if energy_weighted and total > 0 else float(np.mean(cos))


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


SCALE_GAP_DB = 20.0  # channels whose RMS differ by more than this form separate groups
MIN_GROUP_SHARE = 0.05  # a group smaller than this share of the channels is not judged on its own


def scale_groups(ref: np.ndarray, axis: int = 1) -> list[np.ndarray]:
    """Channel indices along ``axis`` of ``ref``, split where the sorted per-channel RMS jumps by more
    than :data:`SCALE_GAP_DB`; ``[]`` when the output is one scale (the usual case).

    A detector's ``[N, 4 + classes, anchors]`` output holds box pixels (RMS ~100) beside class
    probabilities (RMS ~0.01): one SQNR over both measures the boxes only, and a build whose class scores
    carry more noise than signal still reads 30 dB. Channels that are all zero and groups holding less
    than :data:`MIN_GROUP_SHARE` of the channels (one odd logit of a thousand) are left out."""
    if ref.ndim < 2 or ref.shape[axis] < 2:
        return []
    moved = np.moveaxis(ref.astype(np.float64), axis, 0).reshape(ref.shape[axis], -1)
    rms = np.sqrt(np.mean(moved * moved, axis=1))
    live = np.flatnonzero(rms > 0)
    if live.size < 2:
        return []
    order = live[np.argsort(rms[live])]
    jumps = 20.0 * np.log10(rms[order[1:]] / rms[order[:-1]])
    cuts = np.flatnonzero(jumps > SCALE_GAP_DB) + 1
    if cuts.size == 0:
        return []
    smallest = max(1, int(np.ceil(MIN_GROUP_SHARE * ref.shape[axis])))
    groups = sorted((np.sort(g) for g in np.split(order, cuts) if g.size >= smallest), key=lambda g: g[0])
    return groups if len(groups) > 1 else []


def group_metrics(ref: np.ndarray, test: np.ndarray, axis: int = 1) -> list[dict[str, object]]:
    """SQNR and cosine of each :func:`scale_groups` group of channels (``channels`` as ``"0-3"``).

    A group's cosine is :func:`group_cosine`."""
    rows: list[dict[str, object]] = []
    for idx in scale_groups(ref, axis):
        a, b = np.take(ref, idx, axis=axis), np.take(test, idx, axis=axis)
        rows.append({"channels": channel_ranges(idx), "count": int(idx.size),
                     "rms": float(np.sqrt(np.mean(a.astype(np.float64) ** 2))),
                     "sqnr_db": float(sqnr_db(a, b)), "cosine": group_cosine(a, b)})
    return rows


def group_cosine(ref: np.ndarray, test: np.ndarray) -> float:
    """A channel group's cosine weighs each sample by its energy in the group: a group of small-scale
    channels is a detector's class scores, and on a photo with no object (max score 0.001) their direction
    is noise. NudeNet's repaired tflite build read 0.94 as a plain mean of per-photo cosines (photos without
    objects 0.2-0.9) and was called degraded, where the energy-weighted cosine is 0.996, the group's SQNR
    19 dB and 44 of 45 FP32 boxes are found."""
    return cosine(ref, test, energy_weighted=True)


def channel_ranges(idx: np.ndarray) -> str:
    """Sorted indices as ranges: ``[0, 1, 2, 3, 7]`` → ``"0-3, 7"``."""
    parts: list[str] = []
    start = prev = int(idx[0])
    for i in [int(v) for v in idx[1:]] + [-2]:
        if i != prev + 1:
            parts.append(f"{start}-{prev}" if prev > start else f"{start}")
            start = i
        prev = i
    return ", ".join(parts)


Part = tuple[str, "np.ndarray | None"]  # (output name, channel indices along axis 1 or None: all of it)


def judged_parts(reference: Mapping[str, np.ndarray]) -> dict[str, Part]:
    """Every output, and each scale group of its channels (:func:`scale_groups`) as
    ``"name[channels a-b]"``: the parts a budget or a verdict holds to its limits one by one."""
    parts: dict[str, Part] = {}
    for name, ref in reference.items():
        parts[name] = (name, None)
        for idx in scale_groups(ref):
            parts[f"{name}[channels {channel_ranges(idx)}]"] = (name, idx)
    return parts


def part_cosine(ref: np.ndarray, test: np.ndarray, part: Part) -> float:
    """The cosine the verdict and a cosine budget read for ``part``: the plain per-sample mean for a whole
    output, :func:`group_cosine` for a scale group of its channels."""
    return cosine(ref, test) if part[1] is None else group_cosine(ref, test)


def take_parts(values: Mapping[str, np.ndarray], parts: Mapping[str, Part]) -> dict[str, np.ndarray]:
    """``values`` (outputs by name) cut into ``parts``."""
    return {label: values[name] if idx is None else np.take(values[name], idx, axis=1)
            for label, (name, idx) in parts.items()}
