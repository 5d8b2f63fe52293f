"""Stream calibration samples through the FP32 model in ONNX Runtime and observe chosen tensors.

The requested intermediates become the only graph outputs of a temporary session. A worker thread
folds batch ``i``'s outputs into one observer per tensor while ORT computes batch ``i + 1``; each
batch is dropped once observed, so memory is at most two batches of the requested tensors plus one
fixed-size histogram per tensor, whatever the number of samples. The first sample runs alone and
measures the requested tensors' size; the batch size then shrinks, if needed, so that one batch of
them stays within ``EXPOSED_BYTES``.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx

from dsqc.calibration.data import SampleSet
from dsqc.calibration.observers import Observer, make_observer
from dsqc.calibration.ort_session import first_line, output_session
from dsqc.driver.progress import Progress
from dsqc.errors import CalibrationError

log = logging.getLogger(__name__)

_FLOAT_TYPES = {onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
                onnx.TensorProto.BFLOAT16}
OVERLAP = True  # observe batch i in a worker thread while ORT runs batch i + 1
EXPOSED_BYTES = 64 << 20  # per batch: wider models get smaller batches (MiniLM: 34 MB per sample)
_ORT_FLOAT = {"tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"}


@dataclass(frozen=True)
class TensorStats:
    """Observed exact ``min``/``max`` and the method's chosen range ``lo``/``hi`` of one tensor."""

    name: str
    min: float
    max: float
    lo: float
    hi: float
    method: str
    nonfinite: int = 0  # NaN/Inf values seen and left out (e.g. -inf attention masks)


def _feed_names(proto: onnx.ModelProto, samples: SampleSet) -> list[str]:
    """The model's fed inputs (graph inputs minus initializers); every one must have data."""
    inits = {t.name for t in proto.graph.initializer}
    feed_names = [i.name for i in proto.graph.input if i.name not in inits]
    missing = [n for n in feed_names if n not in samples.feeds]
    if missing:
        raise CalibrationError(f"{samples.source}: no data for model input {missing[0]!r}")
    return feed_names


def _check_tensors(proto: onnx.ModelProto, names: Sequence[str]) -> None:
    graph = proto.graph
    consts = {t.name for t in graph.initializer} | {t.values.name for t in graph.sparse_initializer}
    consts |= {o for n in graph.node if n.op_type == "Constant" for o in n.output}
    produced = {o for n in graph.node for o in n.output if o} | {i.name for i in graph.input}
    for name in names:
        if name in consts:
            raise CalibrationError(f"tensor {name!r} is a constant; calibrate activations only")
        if name not in produced:
            raise CalibrationError(f"tensor {name!r} is not produced by any node of the main graph")


def _known_types(proto: onnx.ModelProto) -> dict[str, int]:
    graph = proto.graph
    return {vi.name: vi.type.tensor_type.elem_type
            for vi in (*graph.input, *graph.value_info, *graph.output)
            if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type}


def _fixed_batch(proto: onnx.ModelProto) -> int | None:
    inits = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:
        dims = vi.type.tensor_type.shape.dim
        if vi.name not in inits and dims and dims[0].HasField("dim_value") and dims[0].dim_value > 0:
            return int(dims[0].dim_value)
    return None


def _observe(observers: dict[str, Observer], arrays: dict[str, np.ndarray]) -> None:
    for name, arr in arrays.items():
        observers[name].update(arr)


def _plan_outputs(proto: onnx.ModelProto, names: list[str]) -> tuple[list[str], list[str], Any]:
    """Split float tensors into graph inputs (observed from the feeds) and a session computing the rest."""
    types = _known_types(proto)
    for name in [n for n in names if n in types and types[n] not in _FLOAT_TYPES]:
        log.debug("calibration skips %r: not a float tensor", name)
        names.remove(name)
    graph_inputs = {i.name for i in proto.graph.input}
    fed = [n for n in names if n in graph_inputs]
    run = [n for n in names if n not in graph_inputs]
    session = output_session(proto, run, types) if run else None
    if session is not None:  # types ORT inferred where the model stored none
        out_types = {o.name: o.type for o in session.get_outputs()}
        dropped = [n for n in run if out_types.get(n) not in _ORT_FLOAT]
        if dropped:
            log.debug("calibration skips %s: not float tensors", ", ".join(map(repr, dropped)))
            run = [n for n in run if n not in dropped]
            session = output_session(proto, run, types) if run else None
    return fed, run, session


def _batch_plan(proto: onnx.ModelProto, samples: SampleSet, batch_size: int) -> tuple[int, SampleSet, bool]:
    """``(batch size, samples to use, whether the size is fixed by the model)``."""
    fixed = _fixed_batch(proto)
    if fixed is None:
        return max(1, batch_size), samples, False
    n = len(samples)
    if n < fixed:
        raise CalibrationError(f"{samples.source}: the model's batch is fixed to {fixed}, got {n} samples")
    if n % fixed:
        log.warning("batch fixed to %d: the last %d samples are not used", fixed, n % fixed)
    return fixed, samples.take(n - n % fixed), True


def _fitting_batch(bs: int, n: int, exposed: int) -> int:
    """The batch size whose exposed tensors fit ``EXPOSED_BYTES``, given ``exposed`` bytes for ``n`` samples
    (never larger than ``bs``). Ranges do not depend on the batch size, so changing it mid-stream is safe."""
    per_sample = max(1, exposed // max(n, 1))
    fitting = max(1, min(bs, EXPOSED_BYTES // per_sample))
    if fitting < bs:
        log.info("calibration: %.1f MB of exposed tensors per sample; batches of %d instead of %d",
                 per_sample / 1e6, fitting, bs)
    return fitting


def _stream(
    session: Any,
    run: list[str],
    fed: list[str],
    observers: dict[str, Observer],
    samples: SampleSet,
    feed_names: list[str],
    batch_size: int,
    fixed: bool,
    bar: Progress,
) -> None:
    """Feed every batch; ORT computes batch ``i + 1`` while a worker observes batch ``i``."""
    done, total, bs = 0, len(samples), batch_size
    batched = fixed  # whether a batch of more than one sample has run
    pending: Future[None] | None = None
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="dsqc-observe") as pool:
        while done < total:
            n = 1 if done == 0 and not fixed else min(bs, total - done)  # sample 0 probes the sizes
            batch = {k: samples.feeds[k][done : done + n] for k in feed_names}
            try:
                outs = session.run(run, batch) if session is not None else []
            except Exception as exc:
                if n > 1 and not batched:  # e.g. a Reshape that pins batch 1
                    log.info("the model failed at batch size %d (%s); calibrating with batch 1",
                                n, first_line(exc))
                    bs, batched = 1, True
                    continue
                raise CalibrationError(
                    f"{samples.source}: ONNX Runtime failed on samples {done}..{done + n - 1}: "
                    f"{first_line(exc)}") from None
            batched = batched or n > 1
            if done == 0 and not fixed:
                bs = _fitting_batch(bs, n, sum(int(o.nbytes) for o in outs))
            arrays = dict(zip(run, outs, strict=True)) | {k: batch[k] for k in fed}
            del outs
            if pending is not None:
                pending.result()
            if OVERLAP:
                pending = pool.submit(_observe, observers, arrays)
            else:
                _observe(observers, arrays)
            del arrays
            done += n
            bar.update(done)
        if pending is not None:
            pending.result()


def calibrate(
    proto: onnx.ModelProto,
    tensors: Sequence[str],
    samples: SampleSet,
    method: str = "entropy",
    batch_size: int = 8,
    progress: bool | None = None,
    keep_observers: dict[str, Observer] | None = None,
    **observer_options: Any,
) -> dict[str, TensorStats]:
    """Observe ``tensors`` over ``samples`` with ``method``; non-float tensors are skipped.

    Models whose batch dim is fixed run at that size; a model that fails at ``batch_size`` on the
    first batch (a Reshape pinning batch 1) reruns at 1. The ranges do not depend on the batch size.
    ``keep_observers``: filled with the observers, for callers that want the histograms themselves.
    """
    start = time.perf_counter()
    make_observer(method, **observer_options)  # a bad method or option fails before any work
    names = list(dict.fromkeys(tensors))
    _check_tensors(proto, names)
    feed_names = _feed_names(proto, samples)
    if len(samples) == 0:
        raise CalibrationError(f"{samples.source}: no samples to calibrate with")
    if not names:
        return {}
    fed, run, session = _plan_outputs(proto, names)
    observers: dict[str, Observer] = {n: make_observer(method, **observer_options) for n in (*fed, *run)}
    bs, samples, fixed = _batch_plan(proto, samples, batch_size)
    bar = Progress("calibrating", len(samples), sys.stderr.isatty() if progress is None else progress,
                   "samples")
    try:
        _stream(session, run, fed, observers, samples, feed_names, bs, fixed, bar)
    finally:
        bar.close()
    if keep_observers is not None:
        keep_observers.update(observers)

    stats: dict[str, TensorStats] = {}
    for name in (n for n in names if n in observers):
        obs = observers[name]
        try:
            lo, hi = obs.range()
        except ValueError:
            raise CalibrationError(
                f"tensor {name!r} held no finite value over {samples.source}; leave it unquantized") from None
        if obs.nonfinite:
            log.warning("tensor %r: %d NaN/Inf values left out of its range", name, obs.nonfinite)
        stats[name] = TensorStats(name, obs.min, obs.max, lo, hi, method, obs.nonfinite)
    log.info("calibrated %d tensors on %d samples in %.2f s (%s)", len(stats), len(samples),
             time.perf_counter() - start, method)
    return stats


def stream_tensors(proto: onnx.ModelProto, names: list[str], samples: SampleSet,
                   batch_size: int) -> Iterator[dict[str, np.ndarray]]:
    """Batches of the named tensors of ``proto`` on ``samples`` (graph inputs are taken from the feeds)."""
    feed_names = _feed_names(proto, samples)
    run = sorted({n for n in names if n not in feed_names})
    session = output_session(proto, run, _known_types(proto)) if run else None
    bs, samples, _ = _batch_plan(proto, samples, batch_size)
    for batch in samples.batches(bs):
        feeds = {k: batch[k] for k in feed_names}
        try:
            outs = session.run(run, feeds) if session is not None else []
        except Exception as exc:
            raise CalibrationError(f"{samples.source}: ONNX Runtime failed: {first_line(exc)}") from None
        yield dict(zip(run, outs, strict=True)) | {k: feeds[k] for k in feed_names if k in names}
