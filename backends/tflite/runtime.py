"""Running ``.tflite`` files in the LiteRT interpreter (XNNPACK by default): outputs, tensors, latency.

Only validated files get here (``validate.validate``): LiteRT aborts the process on some bad files.
"""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import logging
import os
import re
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np

from dsqc.verify import Timing, interleaved_timings

Feeds = dict[str, np.ndarray]
log = logging.getLogger(__name__)
_ROUTINE = re.compile(r"Created TensorFlow Lite .*delegate|Replacing \d+ out of \d+ node")


def available() -> bool:
    """Whether the LiteRT interpreter (``ai-edge-litert``) is installed here."""
    return importlib.util.find_spec("ai_edge_litert") is not None


def interpreter(blob: bytes, threads: int = 1) -> Any:
    """An allocated interpreter with the default delegates (XNNPACK)."""
    lite = importlib.import_module("ai_edge_litert.interpreter")
    with runtime_stderr_to_log():
        it = lite.Interpreter(model_content=blob, num_threads=threads)
        it.allocate_tensors()
    return it


@contextlib.contextmanager
def runtime_stderr_to_log() -> Iterator[None]:
    """Route what the C++ runtime writes to file descriptor 2 into ``logging``.

    LiteRT prints "INFO: Created TensorFlow Lite XNNPACK delegate for CPU." on every interpreter it
    creates, straight to fd 2 where Python's ``sys.stderr`` cannot catch it. That line goes to the debug
    log (``-vv``); anything else the runtime says becomes a warning, so it is neither lost nor shown
    under ``-q``.
    """
    sys.stderr.flush()
    saved = os.dup(2)
    try:
        with tempfile.TemporaryFile() as sink:
            os.dup2(sink.fileno(), 2)
            try:
                yield
            finally:
                os.dup2(saved, 2)
                sink.seek(0)
                text = sink.read().decode("utf-8", errors="replace")
    finally:
        os.close(saved)
    for line in filter(None, (raw.strip() for raw in text.splitlines())):
        level = logging.DEBUG if _ROUTINE.search(line) else logging.WARNING
        log.log(level, "LiteRT: %s", line)


def _to_input(detail: dict[str, Any], x: np.ndarray, nhwc: bool) -> np.ndarray:
    if nhwc and x.ndim == 4:
        x = x.transpose(0, 2, 3, 1)
    if detail["dtype"] == np.int8:
        scale, zero = detail["quantization"]
        x = np.clip(np.rint(x / scale) + zero, -128, 127)
    return np.ascontiguousarray(x, dtype=detail["dtype"])


def _from_output(detail: dict[str, Any], y: np.ndarray, nhwc: bool) -> np.ndarray:
    if detail["dtype"] == np.int8:
        scale, zero = detail["quantization"]
        y = (y.astype(np.float32) - zero) * np.float32(scale)
    if nhwc and y.ndim == 4:
        y = y.transpose(0, 3, 1, 2)
    return np.asarray(y, np.float32)


def samples(batches: list[Feeds], names: list[str], batch: int = 1) -> list[list[np.ndarray]]:
    """Split ONNX-style batches into runs of ``batch`` samples (1, or the batch size the model fixes)
    ordered like ``names``."""
    out: list[list[np.ndarray]] = []
    for feeds in batches:
        n = next(iter(feeds.values())).shape[0]
        out.extend([feeds[name][i:i + batch] for name in names] for i in range(0, n - n % batch, batch))
    return out


def fed(blob: bytes, sample: list[np.ndarray], nhwc_in: bool = False, threads: int = 1) -> Any:
    """An allocated interpreter (:func:`interpreter`) with ``sample`` set as its inputs, ready to invoke."""
    it = interpreter(blob, threads)
    for detail, x in zip(it.get_input_details(), sample, strict=True):
        it.set_tensor(detail["index"], _to_input(detail, x, nhwc_in))
    return it


def run(blob: bytes, inputs: list[list[np.ndarray]], nhwc_in: bool = False,
        nhwc_out: bool = False) -> list[np.ndarray]:
    """Run every sample; float results per output, concatenated along the batch axis."""
    it = interpreter(blob)
    ins, outs = it.get_input_details(), it.get_output_details()
    results: list[list[np.ndarray]] = [[] for _ in outs]
    for sample in inputs:
        for detail, x in zip(ins, sample, strict=True):
            it.set_tensor(detail["index"], _to_input(detail, x, nhwc_in))
        it.invoke()
        for k, detail in enumerate(outs):
            results[k].append(_from_output(detail, it.get_tensor(detail["index"]), nhwc_out))
    return [np.concatenate(r) for r in results]


def named_outputs(blob: bytes, sample: list[np.ndarray]) -> dict[str, np.ndarray]:
    """Raw output values by tensor name after one run (default delegates: XNNPACK)."""
    it = fed(blob, sample)
    it.invoke()
    return {d["name"]: np.array(it.get_tensor(d["index"])) for d in it.get_output_details()}


def latency_ms(blob: bytes, sample: list[np.ndarray], nhwc_in: bool = False, warmup: int = 5, runs: int = 40,
               threads: int = 1) -> tuple[float, float]:
    """Median batch-1 latency: (wall ms, CPU ms of the calling thread). The interpreter is created
    and allocated outside the timing. With one thread XNNPACK runs on the caller, so the CPU time is
    the robust number on a shared machine; the wall time is what a user sees."""
    it = fed(blob, sample, nhwc_in, threads)
    for _ in range(warmup):
        it.invoke()
    wall, cpu = [], []
    for _ in range(runs):
        start, start_cpu = time.perf_counter(), time.thread_time()
        it.invoke()
        cpu.append((time.thread_time() - start_cpu) * 1e3)
        wall.append((time.perf_counter() - start) * 1e3)
    return float(statistics.median(wall)), float(statistics.median(cpu))


def compare_latency(blobs: Sequence[bytes], sample: list[np.ndarray], nhwc_in: bool = False) -> list[Timing]:
    """Time ``blobs`` side by side, one thread each (XNNPACK runs on the caller): interleaved rounds of
    every interpreter, built and fed outside the timing (``dsqc.verify.interleaved_timings``)."""
    return interleaved_timings([fed(blob, sample, nhwc_in).invoke for blob in blobs])
