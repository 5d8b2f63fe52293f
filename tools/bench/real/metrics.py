"""Metrics of a quantized model's outputs against FP32's (numpy only): SQNR, top-1 agreement, detector
box agreement and mAP@0.5 against the FP32 boxes, VAD probability agreement."""

from __future__ import annotations

import numpy as np

SCORE_THRESHOLD, NMS_IOU, MATCH_IOU = 0.25, 0.45, 0.5


def sqnr_db(ref: np.ndarray, got: np.ndarray) -> float:
    """10·log10(Σref² / Σ(ref − got)²); +inf when equal."""
    ref64 = ref.astype(np.float64)
    noise = float(np.sum((ref64 - got.astype(np.float64)) ** 2))
    return float("inf") if noise == 0 else float(10 * np.log10(max(float(np.sum(ref64**2)), 1e-30) / noise))


def top1_agreement(ref: np.ndarray, got: np.ndarray) -> float:
    return float(np.mean(np.argmax(ref, axis=-1) == np.argmax(got, axis=-1)))


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[x1, y1, x2, y2]`` box with each row of ``boxes``."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-12))


def yolo_boxes(
    pred: np.ndarray, score_threshold: float = SCORE_THRESHOLD, nms_iou: float = NMS_IOU
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One image's YOLOv8 output ``[4 + classes, anchors]`` (cx, cy, w, h, class scores) → boxes
    ``[K, 4]`` (x1, y1, x2, y2), scores ``[K]``, classes ``[K]`` after class-wise greedy NMS."""
    scores_all = pred[4:]
    classes, scores = np.argmax(scores_all, axis=0), np.max(scores_all, axis=0)
    keep = scores >= score_threshold
    cx, cy, w, h = pred[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return nms(boxes, scores[keep], classes[keep], nms_iou)


def nms(
    boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Class-wise greedy non-maximum suppression, highest score first."""
    kept: list[int] = []
    for c in np.unique(classes):
        idx = np.flatnonzero(classes == c)
        idx = idx[np.argsort(-scores[idx], kind="stable")]
        while len(idx):
            kept.append(int(idx[0]))
            idx = idx[1:][iou(boxes[idx[0]], boxes[idx[1:]]) < iou_threshold]
    order = np.array(sorted(kept, key=lambda i: -scores[i]), dtype=np.int64)
    return boxes[order].reshape(-1, 4), scores[order], classes[order]


def _match(
    ref_boxes: np.ndarray, ref_classes: np.ndarray, boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray
) -> np.ndarray:
    """Greedy one-to-one matching in descending score: for each predicted box, True when it takes a
    still-unmatched reference box of its class with IoU ≥ 0.5 (the best such one)."""
    taken = np.zeros(len(ref_boxes), bool)
    hits = np.zeros(len(boxes), bool)
    for i in np.argsort(-scores, kind="stable"):
        cand = np.flatnonzero((ref_classes == classes[i]) & ~taken)
        if not len(cand):
            continue
        overlaps = iou(boxes[i], ref_boxes[cand])
        best = int(np.argmax(overlaps))
        if overlaps[best] >= MATCH_IOU:
            taken[cand[best]] = hits[i] = True
    return hits


Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes, scores, classes


def box_agreement(ref: list[Detections], got: list[Detections]) -> float:
    """Fraction of FP32 boxes matched by a quantized box of the same class with IoU ≥ 0.5 (one-to-one);
    1.0 when FP32 found no boxes and neither did the quantized model."""
    matched = total = 0
    extra = 0
    for (rb, _, rc), (gb, gs, gc) in zip(ref, got, strict=True):
        hits = _match(rb, rc, gb, gs, gc)
        matched += int(hits.sum())
        total += len(rb)
        extra += len(gb) - int(hits.sum())
    if total == 0:
        return 1.0 if extra == 0 else 0.0
    return matched / total


def map50(ref: list[Detections], got: list[Detections]) -> float:
    """mAP@0.5 of the quantized detections with the FP32 boxes as ground truth: per class present in
    FP32, all-point interpolated AP (VOC 2010+) over every image; the mean over those classes."""
    classes = np.unique(np.concatenate([r[2] for r in ref])) if ref else np.array([])
    aps = []
    for c in classes:
        n_gt = sum(int(np.sum(r[2] == c)) for r in ref)
        scores, hits = [], []
        for (rb, _, rc), (gb, gs, gc) in zip(ref, got, strict=True):
            sel = gc == c
            hits.append(_match(rb[rc == c], rc[rc == c], gb[sel], gs[sel], gc[sel]))
            scores.append(gs[sel])
        order = np.argsort(-np.concatenate(scores), kind="stable")
        tp = np.concatenate(hits)[order].astype(np.float64)
        recall = np.cumsum(tp) / n_gt
        precision = np.cumsum(tp) / np.arange(1, len(tp) + 1)
        aps.append(_average_precision(recall, precision))
    return float(np.mean(aps)) if aps else float("nan")


def _average_precision(recall: np.ndarray, precision: np.ndarray) -> float:
    r = np.concatenate([[0.0], recall, [1.0]])
    p = np.concatenate([[0.0], precision, [0.0]])
    p = np.maximum.accumulate(p[::-1])[::-1]  # precision envelope
    steps = np.flatnonzero(r[1:] != r[:-1])
    return float(np.sum((r[steps + 1] - r[steps]) * p[steps + 1]))


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
