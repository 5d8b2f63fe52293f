"""Verification: FP32 and quantized models side by side in ONNX Runtime on held-out samples."""

from __future__ import annotations

import functools
import importlib
import logging
import statistics
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from dsqc.calibration.data import fixed_batch, model_inputs
from dsqc.calibration.ort_session import BatchRunner, first_line
from dsqc.detection import box_agreement_metric, detection_summary, yolo_output
from dsqc.errors import DsqcError, GateError
from dsqc.ir import node_reads
from dsqc.metrics import cosine, group_metrics, output_metrics, top1_agreement

log = logging.getLogger(__name__)
Feeds = dict[str, np.ndarray]


def quiet_onnxruntime(show_warnings: bool = False) -> None:
    """ONNX Runtime's process-wide logger: errors only (its C++ warnings, e.g. shape-merge notices at
    model load, bypass each session's ``log_severity_level``), or warnings too (``-vv``)."""
    ort.set_default_logger_severity(2 if show_warnings else 3)


def session(proto: onnx.ModelProto, threads: int = 0, optimize: bool = True) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.log_severity_level = 3
    if threads:
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    return ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])


def run_batches(sess: ort.InferenceSession, batches: Iterable[Feeds]) -> dict[str, np.ndarray]:
    """Run every batch and concatenate each output along axis 0 (a model pinned to batch 1 behind a
    symbolic axis runs one sample at a time: ``BatchRunner``)."""
    names = [o.name for o in sess.get_outputs()]
    chunks: dict[str, list[np.ndarray]] = {n: [] for n in names}
    runner = BatchRunner(sess, names)
    for i, feeds in enumerate(batches):
        try:
            runs = runner(feeds)
        except Exception as exc:  # ORT raises its own types; a traceback here is a bug, not a message
            shapes = ", ".join(f"{k} {list(v.shape)}" for k, v in feeds.items())
            raise DsqcError(f"ONNX Runtime failed on held-out batch {i} ({shapes}): {first_line(exc)}; "
                            "check that the evaluation data matches the model's inputs") from None
        for values in runs:
            for name, value in zip(names, values, strict=True):
                chunks[name].append(np.asarray(value))
    return {n: np.concatenate(v) if v and v[0].ndim else np.stack(v) for n, v in chunks.items()}


@dataclass
class Verification:
    outputs: dict[str, dict[str, Any]]
    samples: int
    top1_agreement: float | None = None
    task: dict[str, Any] | None = None
    size_bytes: dict[str, int] | None = None
    latency_ms: dict[str, float] | None = None
    padding_mask: dict[str, Any] | None = None  # PaddingMask.to_dict() + the outputs' unmasked numbers
    detections: dict[str, Any] | None = None  # a YOLOv8 head's boxes against FP32's (detection_summary)

    @property
    def min_sqnr(self) -> float:
        return worst_sqnr(self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {"samples": self.samples, "outputs": self.outputs, "min_sqnr_db": self.min_sqnr,
                "top1_agreement": self.top1_agreement, "task": self.task,
                "size_bytes": self.size_bytes, "latency_ms": self.latency_ms,
                "padding_mask": self.padding_mask, "detections": self.detections}


def verify(fp32: onnx.ModelProto, quant: onnx.ModelProto, batches: list[Feeds],
           labels: np.ndarray | None = None, task_metric: str | None = None,
           latency: bool = True, fused: bool = True, mask_padding: bool = True) -> Verification:
    """Compare outputs (SQNR, cosine, MSE, KL), top-1, an optional task metric, size and speed.

    With ``mask_padding``, outputs laid out like an ``attention_mask`` input are measured over its real
    tokens only (``padding_mask``); their all-position SQNR and cosine stay in ``padding_mask``."""
    ref = run_batches(session(fp32), batches)
    got = run_batches(session(quant, optimize=fused), batches)
    result = compare_runs(fp32, batches, ref, got, labels, task_metric, mask_padding)
    result.detections = detections(fp32, ref, got)  # reported, not judged: not in compare_runs' budget checks
    result.size_bytes = {"fp32": fp32.ByteSize(), "quantized": quant.ByteSize()}
    if latency and batches:
        sample = latency_sample(fp32, batches[0])
        base, mine = compare_latency([fp32, quant], sample)
        result.latency_ms = {"batch": len(next(iter(sample.values()))),
                             "fp32": base.wall_ms, "quantized": mine.wall_ms,
                             "ratio": mine.wall_ms / max(base.wall_ms, 1e-9),
                             "cpu_ratio": mine.cpu_ms / max(base.cpu_ms, 1e-9)}
    return result


def compare_runs(fp32: onnx.ModelProto, batches: list[Feeds], ref: Mapping[str, np.ndarray],
                 got: Mapping[str, np.ndarray], labels: np.ndarray | None = None,
                 task_metric: str | None = None, mask_padding: bool = True) -> Verification:
    """What ``verify`` measures of outputs ``got`` (ORT's run of the quantized model, or a target
    runtime's) against FP32's ``ref`` on ``batches``: no size, no latency."""
    got = {name: np.asarray(got[name]).reshape(ref[name].shape) for name in ref}
    per_output, padding = compare_outputs(fp32, batches, ref, got, mask_padding)
    first = next(iter(ref))
    result = Verification(per_output, samples=int(ref[first].shape[0]) if ref[first].ndim else 1)
    result.padding_mask = padding
    if ref[first].ndim == 2 and ref[first].shape[1] > 1:  # a classifier
        result.top1_agreement = top1_agreement(ref[first], got[first])
    if labels is not None or task_metric:
        result.task = load_task_metric(task_metric).judge(dict(ref), got, labels)
    return result


def detections(fp32: onnx.ModelProto, ref: Mapping[str, np.ndarray], got: Mapping[str, np.ndarray]
               ) -> dict[str, Any] | None:
    """A YOLOv8 detector's boxes in ``got`` against FP32's in ``ref`` (None for any other model)."""
    name = yolo_output(fp32)
    if name is None or name not in ref or ref[name].ndim != 3 or min(ref[name].shape[1:]) < 5:
        return None
    return detection_summary(name, ref[name], np.asarray(got[name]).reshape(ref[name].shape))


def latency_sample(proto: onnx.ModelProto, feeds: Feeds) -> Feeds:
    """One batch-1 sample of ``feeds`` to time with, or a whole batch where the model fixes its size."""
    size = fixed_batch(model_inputs(proto)) or 1
    return {k: v[:size] for k, v in feeds.items()}


def measure_latency(proto: onnx.ModelProto, feeds: Feeds, threads: int = 1, warmup: int = 5,
                    runs: int = 40, budget_s: float = 3.0) -> float:
    """Median latency in ms of one batch-1 inference, session built outside the timing."""
    sess = session(proto, threads=threads)
    for _ in range(warmup):
        sess.run(None, feeds)
    times: list[float] = []
    deadline = time.perf_counter() + budget_s
    while len(times) < runs and (len(times) < 10 or time.perf_counter() < deadline):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times)


@dataclass(frozen=True)
class Timing:
    """Median wall-clock and calling-thread CPU time (ms) of one single-threaded inference."""

    wall_ms: float
    cpu_ms: float


def compare_latency(protos: Sequence[onnx.ModelProto], feeds: Feeds, rounds: int = 6, runs: int = 8,
                    budget_s: float = 6.0) -> list[Timing]:
    """Time ``protos`` side by side in ORT (:func:`interleaved_timings`). Sessions run with one intra-op
    thread, so ORT computes on the calling thread and its CPU time does not count time lost to other
    processes."""
    sessions = [session(p, threads=1) for p in protos]
    return interleaved_timings([functools.partial(s.run, None, feeds) for s in sessions], rounds, runs,
                               budget_s=budget_s)


def interleaved_timings(runners: Sequence[Callable[[], object]], rounds: int = 6, runs: int = 8,
                        warmup: int = 3, budget_s: float = 6.0, round_s: float = 0.02) -> list[Timing]:
    """Time single-threaded inference calls side by side: every round calls each runner ``runs`` times
    (more for fast models, so that a round lasts ``round_s``: a 0.06 ms MNIST run needs hundreds of
    samples for a stable median), in alternating order.

    The calling thread's CPU time (``time.thread_time``) does not count time lost to other processes;
    interleaving spreads any remaining drift (frequency, cache) evenly. At least two rounds run, more
    while within ``budget_s``.
    """
    for run in runners:
        for _ in range(warmup):
            run()
    start = time.perf_counter()
    runners[0]()
    once = max(time.perf_counter() - start, 1e-6)
    runs = max(runs, min(1000, int(round_s / once)))
    wall: list[list[float]] = [[] for _ in runners]
    cpu: list[list[float]] = [[] for _ in runners]
    deadline = time.perf_counter() + budget_s
    for r in range(rounds):
        order = range(len(runners)) if r % 2 == 0 else reversed(range(len(runners)))
        for i in order:
            for _ in range(runs):
                w0, c0 = time.perf_counter(), time.thread_time()
                runners[i]()
                cpu[i].append((time.thread_time() - c0) * 1e3)
                wall[i].append((time.perf_counter() - w0) * 1e3)
        if r >= 1 and time.perf_counter() > deadline:
            break
    return [Timing(statistics.median(w), statistics.median(c)) for w, c in zip(wall, cpu, strict=True)]


def check_gates(result: Verification, min_sqnr: float | None, max_drop: float | None) -> None:
    if min_sqnr is not None and result.min_sqnr < min_sqnr:
        worst = min(result.outputs, key=lambda n: result.outputs[n]["sqnr_db"])
        raise GateError(f"output '{worst}' SQNR {result.min_sqnr:.2f} dB is below --min-sqnr {min_sqnr}; "
                        "exclude sensitive nodes in a recipe or use another calibration method")
    if max_drop is not None:
        if result.task is None:
            raise GateError("--max-drop needs labels (e.g. --calib mnist, npz 'labels') or --task-metric")
        if result.task["drop"] > max_drop:
            raise GateError(f"task metric dropped {result.task['drop']:.4f} "
                            f"({result.task['fp32']:.4f} → {result.task['quantized']:.4f}), "
                            f"more than --max-drop {max_drop}")


@dataclass(frozen=True)
class TaskMetric:
    """How a task metric is evaluated. A plain metric runs ``fn(outputs, labels)`` on FP32's outputs and
    on the quantized ones alike; an ``agreement`` metric runs ``fn(outputs, reference=fp32_outputs)`` on
    the quantized outputs only (FP32 agrees with itself: 1.0). Higher is better; drop = FP32 − quantized."""

    name: str
    fn: Callable[..., float]
    agreement: bool = False

    def fp32(self, ref: dict[str, np.ndarray], labels: np.ndarray | None) -> float:
        return 1.0 if self.agreement else float(self.fn(ref, labels))

    def judge(self, ref: dict[str, np.ndarray], got: dict[str, np.ndarray], labels: np.ndarray | None,
              fp32: float | None = None) -> dict[str, Any]:
        """The ``task`` section of ``got`` against FP32's ``ref`` (``fp32``: its value, known already)."""
        fp = self.fp32(ref, labels) if fp32 is None else fp32
        q = float(self.fn(got, reference=ref)) if self.agreement else float(self.fn(got, labels))
        return {"fp32": fp, "quantized": q, "drop": fp - q, "metric": self.name}


def load_task_metric(spec: str | None) -> TaskMetric:
    """``--task-metric``: a built-in name (``BUILTIN_METRICS``) or ``module:function(outputs, labels)``;
    top-1 accuracy against labels when none is given."""
    if not spec:
        return TaskMetric("top1_accuracy", _accuracy)
    if ":" not in spec:
        if spec not in BUILTIN_METRICS:
            raise DsqcError(f"--task-metric {spec}: no such built-in metric (built-ins: "
                            f"{', '.join(BUILTIN_METRICS)}); or module:function")
        return BUILTIN_METRICS[spec]
    return TaskMetric(spec, _load_metric(spec))


def _accuracy(outputs: dict[str, np.ndarray], labels: np.ndarray | None) -> float:
    logits = next(iter(outputs.values()))
    if labels is None or logits.ndim != 2:
        raise DsqcError("top-1 accuracy needs 2-D logits and labels")
    return float(np.mean(np.argmax(logits, axis=-1) == labels))


BUILTIN_METRICS = {"box-agreement": TaskMetric("box-agreement", box_agreement_metric, agreement=True)}


def _load_metric(spec: str) -> Callable[[dict[str, np.ndarray], np.ndarray | None], float]:
    module, _, attr = spec.partition(":")
    try:
        metric: Callable[[dict[str, np.ndarray], np.ndarray | None], float] = getattr(
            importlib.import_module(module), attr)
        return metric
    except (ImportError, AttributeError, ValueError) as exc:
        raise DsqcError(f"--task-metric {spec}: cannot import ({exc}); expected module:function") from exc


# -- padding: [batch, seq] outputs measured over real tokens only -------------------------------------

_MASK_NAME = "mask"  # attention_mask, input_mask, attn_mask, …; "*pad*" names often mean 1 = padding
_PREFERRED_MASK = "attention_mask"


@dataclass(frozen=True)
class PaddingMask:
    """A [batch, seq] 0/1 integer graph input (1 = real token) and the outputs laid out [batch, seq, …]
    under it, whose padded positions are left out of their metrics."""

    input: str
    keep: np.ndarray  # bool [N, S] over every verified sample
    outputs: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {"input": self.input, "outputs": list(self.outputs), "positions": int(self.keep.size),
                "padding": int(self.keep.size - np.count_nonzero(self.keep))}


def padding_mask(proto: onnx.ModelProto, batches: Sequence[Feeds], outputs: Mapping[str, np.ndarray],
                 input_name: str | None = None) -> PaddingMask | None:
    """The padding mask of ``proto`` on ``batches`` and the ``outputs`` (FP32 values, samples
    concatenated in batch order) it applies to; None when the model has none.

    Found structurally: an integer (or bool) graph input named like ``*mask*`` (not ``*pad*``, whose
    polarity is usually 1 = padding), rank 2, holding only 0 and 1 (``attention_mask`` wins over others;
    several other candidates are ambiguous and mask nothing); an output qualifies when it depends on that
    input in the graph and its first two runtime dims equal the mask's, with no static declared dim
    saying otherwise. ``input_name`` (a recorded build's choice) skips the search among names."""
    masks = _mask_candidates(proto, batches, input_name)
    if not masks:
        return None
    name = input_name if input_name in masks else _PREFERRED_MASK if _PREFERRED_MASK in masks else None
    if name is None and len(masks) > 1:
        log.info("padding: several mask-like inputs (%s); none is used to mask outputs", ", ".join(masks))
        return None
    name = name or next(iter(masks))
    keep = masks[name]
    reached = _downstream(proto.graph, name)
    declared = {o.name: _static_dims(o) for o in proto.graph.output}
    mask_dims = next(_static_dims(i) for i in proto.graph.input if i.name == name)
    chosen = tuple(o for o, value in outputs.items()
                   if o in reached and value.ndim >= 2 and value.shape[:2] == keep.shape
                   and not _contradicts(declared.get(o, ())[:2], mask_dims))
    return PaddingMask(name, keep, chosen) if chosen else None


def compare_outputs(proto: onnx.ModelProto, batches: Sequence[Feeds], ref: Mapping[str, np.ndarray],
                    got: Mapping[str, np.ndarray], mask_padding: bool = True,
                    ) -> tuple[dict[str, dict[str, Any]], dict[str, Any] | None]:
    """``output_metrics`` per output of ``proto`` (FP32 ``ref`` vs ``got``, same shapes). With
    ``mask_padding``, outputs under a padding mask (``padding_mask``) over real tokens only; the mask and
    those outputs' all-position SQNR and cosine are returned beside (None where nothing was masked).
    An output whose channels (axis 1) come in scales far apart also gets ``groups``: each scale's own
    SQNR and cosine (``metrics.group_metrics``), so class scores beside box pixels are judged too."""
    per_output: dict[str, dict[str, Any]] = {name: output_metrics(ref[name], got[name]) for name in ref}
    mask = padding_mask(proto, batches, ref) if mask_padding else None
    for name in ref:
        if (mask is None or name not in mask.outputs) and (groups := group_metrics(ref[name], got[name])):
            per_output[name]["groups"] = groups
    if mask is None:
        return per_output, None
    unmasked = {n: {"sqnr_db": per_output[n]["sqnr_db"], "cosine": per_output[n]["cosine"]}
                for n in mask.outputs}
    per_output.update({n: masked_metrics(ref[n], got[n], mask.keep) for n in mask.outputs})
    return per_output, {**mask.to_dict(), "unmasked": unmasked}


def worst_sqnr(per_output: Mapping[str, Mapping[str, Any]]) -> float:
    """The worst SQNR of any output or of any scale group of an output's channels."""
    return min(min([float(m["sqnr_db"])] + [float(g["sqnr_db"]) for g in m.get("groups", ())])
               for m in per_output.values())


def masked_metrics(ref: np.ndarray, got: np.ndarray, keep: np.ndarray) -> dict[str, float]:
    """``output_metrics`` over the positions ``keep`` marks ([N, S] of an [N, S, …] output), except cosine:
    per sample (as unmasked) over its real tokens, padded positions zeroed on both sides."""
    metrics = output_metrics(ref[keep], got[keep])
    where = keep.reshape(keep.shape + (1,) * (ref.ndim - 2))
    metrics["cosine"] = cosine(np.where(where, ref, 0.0), np.where(where, got, 0.0))
    return metrics


def _mask_candidates(proto: onnx.ModelProto, batches: Sequence[Feeds],
                     only: str | None) -> dict[str, np.ndarray]:
    found: dict[str, np.ndarray] = {}
    for spec in model_inputs(proto):
        lower = spec.name.lower()
        named = spec.name == only if only else _MASK_NAME in lower and "pad" not in lower
        integer = np.issubdtype(spec.dtype, np.integer) or spec.dtype == np.bool_
        if not named or not integer or len(spec.shape) not in (0, 2) or not batches:
            continue
        if any(spec.name not in b for b in batches):
            continue
        values = np.concatenate([np.asarray(b[spec.name]) for b in batches])
        if values.ndim == 2 and values.size and np.isin(values, (0, 1)).all() and values.any():
            found[spec.name] = values.astype(bool)
    return found


def _downstream(graph: onnx.GraphProto, name: str) -> set[str]:
    """Every tensor computed from ``name`` (a node reading it, directly or inside a subgraph, taints all
    its outputs); nodes are in topological order, as ONNX requires."""
    reached = {name}
    for node in graph.node:
        if reached.intersection(node_reads(node)):
            reached.update(o for o in node.output if o)
    return reached


def _contradicts(dims: tuple[int | None, ...], mask_dims: tuple[int | None, ...]) -> bool:
    """A static declared dim of the output that differs from the mask's static dim there."""
    return any(a is not None and b is not None and a != b for a, b in zip(dims, mask_dims, strict=False))


def _static_dims(value: onnx.ValueInfoProto) -> tuple[int | None, ...]:
    dims = value.type.tensor_type.shape.dim
    return tuple(d.dim_value if d.HasField("dim_value") else None for d in dims)
