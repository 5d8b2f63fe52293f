"""Metrics of a quantized model's outputs against FP32's (numpy only): SQNR, top-1 agreement, detector
box agreement and mAP@0.5 against the FP32 boxes (``dsqc.detection``), VAD probability agreement."""

from __future__ import annotations

import numpy as np

from dsqc.detection import MATCH_IOU, NMS_IOU, SCORE_THRESHOLD, Detections, iou, map50, nms, yolo_boxes
from dsqc.detection import box_recall as box_agreement  # the bench's "box_agreement" is recall vs FP32

__all__ = ["MATCH_IOU", "NMS_IOU", "SCORE_THRESHOLD", "Detections", "box_agreement", "cosine_rows", "iou",
           "map50", "nms", "sqnr_db", "top1_agreement", "vad_agreement", "yolo_boxes"]


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """10·log10(Σref² / Σ(ref − got)²); +inf when equal."""
    ref64 = ref.astype(np.float64)
    noise = float(np.sum((ref64 - got.astype(np.float64)) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(max(float(np.sum(ref64**2)), 1e-30) / noise))


def top1_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(got, axis=-1)))


def vad_agreement(ref: np.ndarray, got: np.ndarray, threshold: float = 0.5) -> dict[str, float]:
    """Speech probabilities of one streamed model against FP32's: mean/max |Δp| and the fraction of
    chunks on the same side of ``threshold``."""
    diff = np.abs(ref.astype(np.float64) - got.astype(np.float64))
    return {
        "prob_mae": float(diff.mean()),
        "prob_max_abs": float(diff.max()),
        "speech_agreement": float(np.mean((ref > threshold) == (got > threshold))),
    }


def cosine_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Cosine similarity of matching rows."""
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    return np.asarray(
        np.sum(a64 * b64, axis=-1)
        / np.maximum(np.linalg.norm(a64, axis=-1) * np.linalg.norm(b64, axis=-1), 1e-30)
    )
