"""Time prepared dynamic-quantization models on another CPU (onnxruntime + numpy only, no dsqc):
``python tools/bench/dynamic_time.py FOLDER [--threads 1 4]``.

FOLDER holds ``<case>__<variant>.onnx`` and ``<case>__sample.npz`` (one request's inputs), as
``tools.bench.dynamic`` leaves them in ``.cache/dynamic``. Each case's variants run interleaved (order
alternating per round), one session per thread count, after warm-up; the median wall and thread CPU
time per run are printed as JSON.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort


def session(path: Path, threads: int) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def time_case(models: dict[str, Path], feeds: dict[str, np.ndarray], threads: int, rounds: int,
              runs: int) -> dict[str, dict[str, float]]:
    sessions = {name: session(path, threads) for name, path in models.items()}
    for sess in sessions.values():
        for _ in range(5):
            sess.run(None, feeds)
    wall: dict[str, list[float]] = {n: [] for n in sessions}
    cpu: dict[str, list[float]] = {n: [] for n in sessions}
    names = list(sessions)
    for r in range(rounds):
        for name in names if r % 2 == 0 else reversed(names):
            for _ in range(runs):
                w0, c0 = time.perf_counter(), time.thread_time()
                sessions[name].run(None, feeds)
                wall[name].append((time.perf_counter() - w0) * 1e3)
                cpu[name].append((time.thread_time() - c0) * 1e3)
    return {n: {"wall_ms": round(statistics.median(wall[n]), 3),
                "cpu_ms": round(statistics.median(cpu[n]), 3)} for n in names}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("folder", type=Path)
    p.add_argument("--threads", type=int, nargs="*", default=[1, 4])
    p.add_argument("--rounds", type=int, default=10)
    p.add_argument("--runs", type=int, default=10)
    args = p.parse_args()
    result: dict[str, object] = {"onnxruntime": ort.__version__}
    for sample in sorted(args.folder.glob("*__sample.npz")):
        case = sample.name.split("__")[0]
        feeds = dict(np.load(sample))
        models = {m.stem.split("__", 1)[1]: m for m in sorted(args.folder.glob(f"{case}__*.onnx"))}
        result[case] = {f"{t} thread(s)": time_case(models, feeds, t, args.rounds, args.runs)
                        for t in args.threads}
    print(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
