"""YOLOv8 detections in numpy: decode, class-wise NMS, greedy one-to-one matching against reference
boxes (FP32's), box recall, box agreement and mAP@0.5. ``box_agreement_metric`` is
``--task-metric box-agreement``; ``yolo_output`` finds a YOLOv8 export's output in a graph, so every
verification of a detector reports its boxes against FP32's (``detection_summary``), as a classifier's
reports top-1 agreement."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from dsqc.errors import DsqcError

SCORE_THRESHOLD, NMS_IOU, MATCH_IOU = 0.25, 0.45, 0.5
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes [K, 4] (x1, y1, x2, y2), scores, classes


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    """IoU of one ``[x1, y1, x2, y2]`` box with each row of ``boxes``."""
    x1, y1 = np.maximum(box[0], boxes[:, 0]), np.maximum(box[1], boxes[:, 1])
    x2, y2 = np.minimum(box[2], boxes[:, 2]), np.minimum(box[3], boxes[:, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = (box[2] - box[0]) * (box[3] - box[1])
    areas = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
    return np.asarray(inter / np.maximum(area + areas - inter, 1e-12))


def yolo_boxes(pred: np.ndarray, score_threshold: float = SCORE_THRESHOLD,
               nms_iou: float = NMS_IOU) -> Detections:
    """One image's YOLOv8 output ``[4 + classes, anchors]`` (cx, cy, w, h, class scores) → boxes
    ``[K, 4]`` (x1, y1, x2, y2), scores ``[K]``, classes ``[K]`` after class-wise greedy NMS."""
    scores_all = pred[4:]
    classes, scores = np.argmax(scores_all, axis=0), np.max(scores_all, axis=0)
    keep = scores >= score_threshold
    cx, cy, w, h = pred[:4, keep]
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], axis=1)
    return nms(boxes, scores[keep], classes[keep], nms_iou)


def nms(boxes: np.ndarray, scores: np.ndarray, classes: np.ndarray, iou_threshold: float) -> Detections:
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


def match(ref_boxes: np.ndarray, ref_classes: np.ndarray, boxes: np.ndarray, scores: np.ndarray,
          classes: np.ndarray) -> np.ndarray:
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


@dataclass(frozen=True)
class BoxCounts:
    """Matched boxes, reference (FP32) boxes and found (quantized) boxes over a set of images."""

    matched: int
    reference: int
    found: int

    @property
    def recall(self) -> float:
        """Matched / reference; with no reference box, 1.0 when nothing was found either, else 0.0."""
        return self.matched / self.reference if self.reference else float(self.found == 0)

    @property
    def precision(self) -> float:
        """Matched / found; with no found box, 1.0 when the reference has none either, else 0.0."""
        return self.matched / self.found if self.found else float(self.reference == 0)

    @property
    def agreement(self) -> float:
        return min(self.recall, self.precision)


def box_counts(ref: list[Detections], got: list[Detections]) -> BoxCounts:
    """``match`` per image (``got`` against ``ref``), summed."""
    pairs = zip(ref, got, strict=True)
    matched = sum(int(match(rb, rc, gb, gs, gc).sum()) for (rb, _, rc), (gb, gs, gc) in pairs)
    return BoxCounts(matched, sum(len(r[0]) for r in ref), sum(len(g[0]) for g in got))


def box_recall(ref: list[Detections], got: list[Detections]) -> float:
    """Fraction of reference boxes matched by a box of the same class with IoU ≥ 0.5 (one-to-one);
    1.0 when the reference has no box and neither does ``got``."""
    return box_counts(ref, got).recall


def box_agreement(ref: list[Detections], got: list[Detections]) -> float:
    """min(recall, precision) of ``got`` against ``ref``: 1.0 when both found nothing, 0.0 when only
    one side found boxes."""
    return box_counts(ref, got).agreement


def map50(ref: list[Detections], got: list[Detections]) -> float:
    """mAP@0.5 of ``got`` with the ``ref`` boxes as ground truth: per class present in ``ref``,
    all-point interpolated AP (VOC 2010+) over every image; the mean over those classes."""
    classes = np.unique(np.concatenate([r[2] for r in ref])) if ref else np.array([])
    aps = []
    for c in classes:
        n_gt = sum(int(np.sum(r[2] == c)) for r in ref)
        scores, hits = [], []
        for (rb, _, rc), (gb, gs, gc) in zip(ref, got, strict=True):
            sel = gc == c
            hits.append(match(rb[rc == c], rc[rc == c], gb[sel], gs[sel], gc[sel]))
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


def yolo_layout(name: str, value: np.ndarray) -> np.ndarray:
    """Output ``name`` as ``[N, 4 + classes, anchors]``: as is, or transposed from ``[N, anchors, 4 +
    classes]`` (the smaller of dims 1 and 2 is taken for ``4 + classes``)."""
    if value.ndim != 3 or min(value.shape[1:]) < 5:
        raise DsqcError(f"--task-metric box-agreement: output '{name}' has shape {list(value.shape)}; the "
                        "metric expects a YOLOv8-style [N, 4+classes, anchors] output")
    return value if value.shape[1] <= value.shape[2] else value.transpose(0, 2, 1)


def box_agreement_metric(outputs: dict[str, np.ndarray], reference: dict[str, np.ndarray]) -> float:
    """``--task-metric box-agreement``: ``box_agreement`` of the first output's detections against the
    FP32 ``reference``'s, over every image."""
    name = next(iter(reference))
    ref, got = yolo_layout(name, reference[name]), yolo_layout(name, outputs[name])
    return box_agreement([yolo_boxes(r) for r in ref], [yolo_boxes(g) for g in got])


_LAYOUT_OPS = {"Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze", "Identity"}


def yolo_output(model: onnx.ModelProto) -> str | None:
    """The graph output a YOLOv8 export ends in, else None: rank 3, made (through reshapes or transposes)
    by a ``Concat`` on axis 1 of the decoded boxes and the ``Sigmoid`` class scores (ultralytics'
    ``Detect`` head)."""
    producers = {o: n for n in model.graph.node for o in n.output}

    def source(tensor: str) -> onnx.NodeProto | None:
        node = producers.get(tensor)
        while node is not None and node.op_type in _LAYOUT_OPS:
            node = producers.get(node.input[0])
        return node

    for out in model.graph.output:
        node = source(out.name)
        if len(out.type.tensor_type.shape.dim) != 3 or node is None or node.op_type != "Concat" \
                or len(node.input) != 2:
            continue
        axis = next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == "axis"), None)
        scores = source(node.input[1])
        if axis in (1, -2) and scores is not None and scores.op_type == "Sigmoid":
            return out.name
    return None


def detection_summary(name: str, ref: np.ndarray, got: np.ndarray) -> dict[str, Any]:
    """Boxes of output ``name`` (``[N, 4 + classes, anchors]``) against FP32's on the same images: counts,
    recall, precision, agreement (their minimum) and mAP@0.5 with FP32's boxes as ground truth."""
    ref_boxes = [yolo_boxes(r) for r in yolo_layout(name, ref)]
    got_boxes = [yolo_boxes(g) for g in yolo_layout(name, got)]
    counts = box_counts(ref_boxes, got_boxes)
    return {"output": name, "images": len(ref_boxes), "fp32_boxes": counts.reference, "boxes": counts.found,
            "matched": counts.matched, "recall": counts.recall, "precision": counts.precision,
            "agreement": counts.agreement, "map50": map50(ref_boxes, got_boxes),
            "rule": f"score >= {SCORE_THRESHOLD:g}, class-wise NMS {NMS_IOU:g}, same class and IoU >= "
                    f"{MATCH_IOU:g}"}


def detection_line(d: dict[str, Any]) -> str:
    """``d`` (``detection_summary``, as a report holds it) in one line."""
    mean_ap = f", mAP@0.5 {d['map50']:.3f}" if d.get("map50") is not None and np.isfinite(d["map50"]) else ""
    return (f"boxes vs FP32 ({d['output']}, a YOLOv8 head; {d['images']} images): {d['matched']} of "
            f"{d['fp32_boxes']} FP32 boxes matched, {d['boxes']} found (agreement {d['agreement']:.3f}"
            f"{mean_ap})")
