"""Sentence-embedding cosine of a dsqc int8 ``.tflite`` MiniLM (run in LiteRT) to its FP32 ONNX model.

Embedding = mean of ``last_hidden_state`` over the attention mask (sentence-transformers pooling),
L2-normalised; reported: mean and minimum cosine over the held-out sentences, and LiteRT latency.

    python -m tools.bench.tflite_minilm out/minilm.int8.tflite /work/realmodels/minilm.onnx \\
        /work/realmodels/minilm.eval.npz
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort

from dsqc.backends.tflite import runtime
from dsqc.models.minilm import mean_pool


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("tflite", type=Path)
    p.add_argument("onnx", type=Path)
    p.add_argument("data", type=Path, help="npz: input_ids, attention_mask, token_type_ids [N, seq]")
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--threads", type=int, nargs="*", default=[1])
    args = p.parse_args()
    session = ort.InferenceSession(str(args.onnx), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    data = np.load(args.data)
    feeds = {n: data[n][: args.samples] for n in names}
    count = len(feeds[names[0]])
    fp32 = np.concatenate([session.run(None, {n: feeds[n][i:i + 1] for n in names})[0] for i in range(count)])
    blob = args.tflite.read_bytes()
    samples = [[feeds[n][i:i + 1] for n in names] for i in range(count)]
    got = runtime.run(blob, samples)[0]
    mask = feeds["attention_mask"]
    cos = (mean_pool(fp32, mask) * mean_pool(got, mask)).sum(1)
    result: dict[str, object] = {"samples": count, "embedding_cosine_mean": float(cos.mean()),
                                 "embedding_cosine_min": float(cos.min())}
    for threads in args.threads:
        wall, cpu = runtime.latency_ms(blob, samples[0], threads=threads)
        result[f"latency_ms_{threads}t"] = {"wall": round(wall, 2), "cpu": round(cpu, 2)}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
