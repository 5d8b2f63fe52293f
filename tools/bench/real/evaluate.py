"""FP32 and quantized models of one case side by side in ONNX Runtime (default graph optimizations, so
int8 kernels fuse as deployed): output SQNR, the task metric, batch-1 latency, file size."""

from __future__ import annotations

import logging
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from tools.bench.real import metrics

log = logging.getLogger(__name__)
Feeds = dict[str, np.ndarray]
EVAL_BATCH = 16


def session(path: Path, threads: int = 2) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def outputs(path: Path, feeds: Feeds) -> np.ndarray:
    """The first graph output over all held-out samples, in batches."""
    sess = session(path)
    name = sess.get_outputs()[0].name
    n = len(next(iter(feeds.values())))
    inputs = {i.name for i in sess.get_inputs()}
    parts = [
        sess.run([name], {k: v[s : s + EVAL_BATCH] for k, v in feeds.items() if k in inputs})[0]
        for s in range(0, n, EVAL_BATCH)
    ]
    return np.concatenate(parts)


def stream_vad(path: Path, feeds: Feeds, starts: list[int]) -> np.ndarray:
    """Stream each held-out recording through the model on its own state (zeros at each stream start)."""
    sess = session(path, threads=1)
    n = len(feeds["input"])
    probs = np.empty(n, np.float32)
    state = np.zeros((1, 2, 128), np.float32)
    for i in range(n):
        if i in starts:
            state = np.zeros_like(state)
        p, state = sess.run(None, {"input": feeds["input"][i : i + 1], "state": state})
        probs[i] = p[0, 0]
    return probs


def task(
    kind: str,
    meta: dict[str, Any],
    path: Path,
    ref: np.ndarray,
    got: np.ndarray,
    feeds: Feeds,
    labels: np.ndarray | None,
    ref_stream: np.ndarray | None,
) -> dict[str, float]:
    """The case's task metric of ``got`` against FP32's ``ref`` (and labels when there are)."""
    if kind == "classifier":
        return {"top1_agreement": metrics.top1_agreement(ref, got)}
    if kind == "mnist":
        assert labels is not None
        return {
            "accuracy": float(np.mean(np.argmax(got, -1) == labels)),
            "top1_agreement": metrics.top1_agreement(ref, got),
        }
    if kind == "detector":
        ref_det = [metrics.yolo_boxes(r) for r in ref]
        got_det = [metrics.yolo_boxes(g) for g in got]
        return {
            "box_agreement": metrics.box_agreement(ref_det, got_det),
            "map50": metrics.map50(ref_det, got_det),
            "fp32_boxes": float(sum(len(d[0]) for d in ref_det)),
            "boxes": float(sum(len(d[0]) for d in got_det)),
        }
    if kind == "vad":
        assert ref_stream is not None
        streamed = ref_stream if got is ref else stream_vad(path, feeds, meta["streams"])
        return metrics.vad_agreement(ref_stream, streamed)
    if kind == "embedding":
        mask = feeds["attention_mask"][..., None].astype(np.float64)
        a, b = (np.sum(x * mask, 1) / np.maximum(mask.sum(1), 1) for x in (ref, got))
        cos = metrics.cosine_rows(a, b)
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min())}
    raise ValueError(f"unknown kind {kind!r}")


def latency(paths: dict[str, Path], sample: Feeds, rounds: int, runs: int) -> dict[str, dict[str, float]]:
    """Batch-1 latency, one intra-op thread: every round times each model (median of ``runs``), models
    interleaved and the order reversed every other round; ratio = median over rounds of model / FP32."""
    sessions = {k: session(p, threads=1) for k, p in paths.items()}
    per_round: dict[str, list[float]] = {k: [] for k in paths}
    order = list(paths)
    for r in range(rounds):
        for label in order if r % 2 == 0 else order[::-1]:
            sess = sessions[label]
            feeds = {i.name: sample[i.name] for i in sess.get_inputs()}
            for _ in range(3):
                sess.run(None, feeds)
            times = []
            for _ in range(runs):
                start = time.perf_counter()
                sess.run(None, feeds)
                times.append(time.perf_counter() - start)
            per_round[label].append(statistics.median(times) * 1e3)
    return {
        k: {
            "latency_ms": statistics.median(v),
            "latency_ratio": statistics.median(a / b for a, b in zip(v, per_round["fp32"], strict=True)),
        }
        for k, v in per_round.items()
    }


def evaluate(meta: dict[str, Any], folder: Path, variants: dict[str, Path]) -> dict[str, dict[str, Any]]:
    """Rows for FP32 and every variant: size, SQNR of the first output, task metric."""
    feeds, labels = held_out(meta, folder)
    kind = meta["kind"]
    paths = {"fp32": folder / meta["model"], **variants}
    ref = outputs(paths["fp32"], feeds)
    ref_stream = stream_vad(paths["fp32"], feeds, meta["streams"]) if kind == "vad" else None
    keep = feeds["attention_mask"].astype(bool) if kind == "embedding" else slice(None)
    rows: dict[str, dict[str, Any]] = {}
    for label, path in paths.items():
        got = ref if label == "fp32" else outputs(path, feeds)
        rows[label] = {
            "size_mb": path.stat().st_size / 2**20,
            "size_ratio": path.stat().st_size / paths["fp32"].stat().st_size,
            "sqnr_db": metrics.sqnr_db(ref[keep], got[keep]),
            "task": task(kind, meta, path, ref, got, feeds, labels, ref_stream),
        }
    return rows


def held_out(meta: dict[str, Any], folder: Path) -> tuple[Feeds, np.ndarray | None]:
    with np.load(folder / meta["eval"]) as npz:
        feeds = {k: npz[k] for k in npz.files}
    return feeds, feeds.pop("labels", None)


def noise_floor(meta: dict[str, Any], folder: Path, seed: int = 0) -> float | None:
    """SQNR of FP32 against FP32 fed inputs moved by uniform ±½ step of an 8-bit grid over each float
    input's range: what quantizing the inputs alone costs. A model this sensitive (random-weight graphs
    can be chaotic) cannot rank quantizers above this floor. None when no input is float."""
    feeds, _ = held_out(meta, folder)
    if not any(v.dtype == np.float32 for v in feeds.values()):
        return None
    rng = np.random.default_rng(seed)
    noisy = dict(feeds)
    for k, v in feeds.items():
        if v.dtype == np.float32:
            step = float(v.max() - v.min()) / 255
            noisy[k] = v + rng.uniform(-step / 2, step / 2, v.shape).astype(np.float32)
    model = folder / meta["model"]
    return metrics.sqnr_db(outputs(model, feeds), outputs(model, noisy))
