"""Box agreement of a dsqc int8 ``.tflite`` YOLOv8 detector with its FP32 ONNX model, in LiteRT.

Both outputs ``[N, 4 + classes, anchors]`` (cx, cy, w, h in pixels, then class scores) are decoded the
same way: score = max class score ≥ ``--conf``, per-class NMS at IoU 0.45. An FP32 box is matched when
an unused int8 box of the same class overlaps it with IoU ≥ 0.5 (greedy one-to-one, int8 boxes by score).

    python -m tools.bench.tflite_detector out/nudenet_320n.int8.tflite \\
        /work/realmodels/nudenet_320n.onnx /work/realmodels/nudenet_320n.eval.npz

The decode, NMS and matching are ``dsqc.detection``'s (those of the real-weight benchmark and of
``--task-metric box-agreement``).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dsqc import detection
from dsqc.backends.tflite import runtime


def agreement(fp32: np.ndarray, int8: np.ndarray, conf: float) -> dict[str, float]:
    ref = [detection.yolo_boxes(r, score_threshold=conf) for r in fp32]
    got = [detection.yolo_boxes(g, score_threshold=conf) for g in int8]
    counts = detection.box_counts(ref, got)
    return {"fp32_boxes": counts.reference, "int8_boxes": counts.found, "matched": counts.matched,
            "recall_vs_fp32": counts.recall, "precision_vs_fp32": counts.precision,
            "map50_vs_fp32": detection.map50(ref, got)}


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
