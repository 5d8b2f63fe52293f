"""FP32 and every quantized model of one case, side by side: SQNR, task metrics, size, latency, profile."""

from __future__ import annotations

import json
import logging
import statistics
import time
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from dsqc.metrics import cosine, sqnr_db, top1_agreement
from dsqc.verify import measure_latency, run_batches, session
from tools.bench.data import Feeds, batches, load_npz

log = logging.getLogger(__name__)
EVAL_BATCH = 32


def evaluate(spec: dict[str, Any]) -> dict[str, Any]:
    """``spec``: fp32, variants {label: path}, eval (npz), kind, rounds, runs, profile."""
    paths = {"fp32": Path(spec["fp32"]), **{k: Path(v) for k, v in spec["variants"].items()}}
    feeds, labels = load_npz(Path(spec["eval"]))
    protos = {k: onnx.load(str(p)) for k, p in paths.items()}
    outputs = {k: _first_output(proto, feeds) for k, proto in protos.items()}
    ref = outputs["fp32"]
    # MiniLM: hidden states of padding tokens are never used (mean pooling masks them out)
    keep = feeds["attention_mask"].astype(bool) if spec["kind"] == "minilm" else slice(None)
    rows: dict[str, dict[str, Any]] = {}
    for label, path in paths.items():
        rows[label] = {
            "size_mb": path.stat().st_size / 2**20,
            "size_ratio": path.stat().st_size / paths["fp32"].stat().st_size,
            "sqnr_db": sqnr_db(ref[keep], outputs[label][keep]),
            "sqnr_all_db": sqnr_db(ref, outputs[label]),
            "task": task_metrics(spec["kind"], ref, outputs[label], feeds, labels, path),
        }
    sample = {k: v[:1] for k, v in feeds.items()}
    for label, lat in latencies(protos, sample, spec.get("rounds", 3), spec.get("runs", 50)).items():
        rows[label].update(lat)
    if spec.get("profile"):
        slow = [k for k in protos if k != "fp32" and rows[k]["latency_ratio"] > 1.0]
        for label in ["fp32", *slow] if slow else []:
            rows[label]["profile"] = profile_ops(protos[label], sample)
    return {"rows": rows, "eval_samples": len(ref)}


def _first_output(proto: onnx.ModelProto, feeds: Feeds) -> np.ndarray:
    out = run_batches(session(proto), batches(feeds, EVAL_BATCH))
    return out[proto.graph.output[0].name]


def task_metrics(kind: str, ref: np.ndarray, got: np.ndarray, feeds: Feeds, labels: np.ndarray | None,
                 path: Path) -> dict[str, float]:
    """MNIST: accuracy; MiniLM: pooled-embedding cosine, Lee-50, WordSim353; others: agreement/cosine."""
    if kind == "mnist" and labels is not None:
        return {"accuracy": float(np.mean(np.argmax(got, axis=-1) == labels))}
    if kind == "minilm":
        from dsqc.models import minilm

        mask = feeds["attention_mask"]
        a, b = minilm.mean_pool(ref, mask), minilm.mean_pool(got, mask)
        cos = np.sum(a * b, axis=1)
        return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()),
                **minilm.evaluate(minilm.ort_run_fn(path))}
    if ref.ndim == 2 and ref.shape[1] > 1:
        return {"top1_agreement": top1_agreement(ref, got), "cosine_mean": cosine(ref, got)}
    return {"cosine_mean": cosine(ref, got)}


def latencies(protos: dict[str, onnx.ModelProto], sample: Feeds, rounds: int, runs: int
              ) -> dict[str, dict[str, Any]]:
    """Median batch-1 latency (1 thread) per model, all models back to back in each round.

    Rounds alternate the order. Other jobs on the machine only ever add time, so the headline is the
    best round's median (``latency_ms``, ratio of those); the median of per-round ratios is kept too.
    """
    ms: dict[str, list[float]] = defaultdict(list)
    cpu: dict[str, list[float]] = defaultdict(list)
    order = list(protos)
    for r in range(max(1, rounds)):
        for label in order if r % 2 == 0 else order[::-1]:
            ms[label].append(measure_latency(protos[label], sample, threads=1, warmup=5, runs=runs,
                                             budget_s=60.0))
            cpu[label].append(cpu_latency(protos[label], sample, runs))
    result = {}
    for label, times in ms.items():
        ratios = [t / f for t, f in zip(times, ms["fp32"], strict=True)]
        result[label] = {"latency_ms": min(times), "latency_rounds_ms": times,
                         "latency_ratio": min(times) / min(ms["fp32"]),
                         "latency_ratio_median_of_rounds": statistics.median(ratios),
                         "cpu_latency_ms": min(cpu[label]), "cpu_latency_rounds_ms": cpu[label],
                         "cpu_latency_ratio": min(cpu[label]) / min(cpu["fp32"])}
    return result


def cpu_latency(proto: onnx.ModelProto, feeds: Feeds, runs: int, warmup: int = 5) -> float:
    """Median CPU time (ms) of the calling thread per batch-1 run: with one intra-op thread ORT
    computes inline, so this is the work itself, unaffected by other processes taking the core."""
    sess = session(proto, threads=1)
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(runs):
        start = time.thread_time()
        sess.run(None, feeds)
        times.append((time.thread_time() - start) * 1e3)
    return statistics.median(times)


def profile_ops(proto: onnx.ModelProto, sample: Feeds, runs: int = 30, top: int = 8) -> dict[str, Any]:
    """Per-op-type and per-node kernel time (ms per run, 1 thread) from ORT's profiler."""
    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = options.inter_op_num_threads = 1
    options.enable_profiling = True
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    for _ in range(runs):
        sess.run(None, sample)
    trace = Path(sess.end_profiling())
    events = json.loads(trace.read_text())
    trace.unlink(missing_ok=True)
    by_op: dict[str, float] = defaultdict(float)
    by_node: dict[str, float] = defaultdict(float)
    counts: dict[str, int] = defaultdict(int)
    for ev in events:
        if ev.get("cat") != "Node" or not ev.get("name", "").endswith("_kernel_time"):
            continue
        op = ev.get("args", {}).get("op_name", "?")
        by_op[op] += ev["dur"] / 1e3 / runs
        by_node[f"{ev['name'].removesuffix('_kernel_time')} ({op})"] += ev["dur"] / 1e3 / runs
        counts[op] += 1
    ops = sorted(by_op.items(), key=lambda kv: -kv[1])
    return {"ops_ms": {k: round(v, 4) for k, v in ops},
            "op_nodes": {k: counts[k] // runs for k, _ in ops},
            "top_nodes_ms": {k: round(v, 4) for k, v in sorted(by_node.items(), key=lambda kv: -kv[1])[:top]}}
