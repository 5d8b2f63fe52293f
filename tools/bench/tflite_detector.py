"""Box agreement of a dsqc int8 ``.tflite`` YOLOv8 detector with its FP32 ONNX model, in LiteRT.

Both outputs ``[N, 4 + classes, anchors]`` (cx, cy, w, h in pixels, then class scores) are decoded the
same way: score = max class score ≥ ``--conf``, per-class NMS at IoU 0.45. An FP32 box is matched when
an unused int8 box of the same class overlaps it with IoU ≥ 0.5 (greedy, FP32 boxes by score).

    python -m tools.bench.tflite_detector out/nudenet_320n.int8.tflite \\
        /work/realmodels/nudenet_320n.onnx /work/realmodels/nudenet_320n.eval.npz

(Branch ``realbench`` has its own ``box_agreement`` in tools/bench/real/metrics.py; it was not on main
when this was written, so this script carries a small one.)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dsqc.backends.tflite import runtime


@dataclass
class Detections:
    boxes: np.ndarray   # [K, 4] x1, y1, x2, y2
    scores: np.ndarray  # [K]
    classes: np.ndarray  # [K]


def iou(box: np.ndarray, boxes: np.ndarray) -> np.ndarray:
    lo, hi = np.maximum(box[:2], boxes[:, :2]), np.minimum(box[2:], boxes[:, 2:])
    inter = np.prod(np.clip(hi - lo, 0, None), axis=1)
    area = np.prod(box[2:] - box[:2]) + np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    return inter / np.maximum(area - inter, 1e-9)


def decode(raw: np.ndarray, conf: float, nms_iou: float = 0.45) -> Detections:
    """One image's ``[4 + classes, anchors]`` output → boxes after per-class NMS."""
    cx, cy, w, h = raw[:4]
    scores_all = raw[4:]
    cls, score = scores_all.argmax(0), scores_all.max(0)
    keep = score >= conf
    boxes = np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)[keep]
    cls, score = cls[keep], score[keep]
    chosen: list[int] = []
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        idx = idx[np.argsort(-score[idx])]
        while idx.size:
            chosen.append(int(idx[0]))
            idx = idx[1:][iou(boxes[idx[0]], boxes[idx[1:]]) < nms_iou] if idx.size > 1 else idx[1:]
    sel = np.asarray(chosen, np.int64)
    return Detections(boxes[sel], score[sel], cls[sel])


def matched(ref: Detections, got: Detections, threshold: float = 0.5) -> int:
    used = np.zeros(len(got.scores), bool)
    count = 0
    for k in np.argsort(-ref.scores):
        candidates = np.flatnonzero((got.classes == ref.classes[k]) & ~used)
        if not candidates.size:
            continue
        overlaps = iou(ref.boxes[k], got.boxes[candidates])
        best = int(overlaps.argmax())
        if overlaps[best] >= threshold:
            used[candidates[best]] = True
            count += 1
    return count


def agreement(fp32: np.ndarray, int8: np.ndarray, conf: float) -> dict[str, float]:
    ref = [decode(r, conf) for r in fp32]
    got = [decode(g, conf) for g in int8]
    hits = sum(matched(r, g) for r, g in zip(ref, got, strict=True))
    n_ref, n_got = sum(len(r.scores) for r in ref), sum(len(g.scores) for g in got)
    return {"fp32_boxes": n_ref, "int8_boxes": n_got, "matched": hits,
            "recall_vs_fp32": hits / max(n_ref, 1), "precision_vs_fp32": hits / max(n_got, 1)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tflite", type=Path)
    p.add_argument("onnx", type=Path)
    p.add_argument("data", type=Path, help="npz: input name → [N, ...] float32")
    p.add_argument("--conf", type=float, default=0.25)
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--threads", type=int, nargs="*", default=[1])
    args = p.parse_args()
    data = np.load(args.data)
    name = data.files[0]
    images = data[name][: args.samples].astype(np.float32)
    session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    fp32 = np.concatenate([session.run(None, {name: images[i:i + 1]})[0] for i in range(len(images))])
    blob = args.tflite.read_bytes()
    int8 = runtime.run(blob, [[images[i:i + 1]] for i in range(len(images))])[0]
    result: dict[str, object] = {"samples": len(images), "conf": args.conf,
                                 **agreement(fp32, int8, args.conf)}
    for threads in args.threads:
        wall, cpu = runtime.latency_ms(blob, [images[:1]], threads=threads)
        result[f"latency_ms_{threads}t"] = {"wall": round(wall, 2), "cpu": round(cpu, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
