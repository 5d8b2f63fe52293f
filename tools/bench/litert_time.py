"""Time .tflite files in LiteRT with XNNPACK on the CPU that runs this (`python -m tools.bench.litert_time`).

Imports only numpy and ``ai_edge_litert`` (unzipped wheels on ``PYTHONPATH`` are enough), so it runs on a
host without dsqc: build the files here, time them there. Interpreter created and tensors allocated
outside the timing, 5 warm-ups, the files interleaved round by round, median ms per run::

    python -m tools.bench.litert_time DIR --threads 1 4 --out times.json   # DIR: <model>.<int8|fp32>.tflite
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

import numpy as np


def _interpreter(path: Path, threads: int):  # type: ignore[no-untyped-def]
    from ai_edge_litert.interpreter import Interpreter

    interp = Interpreter(model_path=str(path), num_threads=threads)
    interp.allocate_tensors()
    for detail in interp.get_input_details():
        dtype, shape = detail["dtype"], detail["shape"]
        value = np.random.default_rng(0).normal(size=shape)
        interp.set_tensor(detail["index"], value.astype(dtype) if dtype == np.float32 else
                          np.clip(value * 20, -128, 127).astype(dtype))
    return interp


def time_dir(folder: Path, threads: list[int], rounds: int, runs: int) -> dict[str, dict[str, float]]:
    files = sorted(folder.glob("*.tflite"))
    result: dict[str, dict[str, float]] = {}
    for n in threads:
        interps = {f.name: _interpreter(f, n) for f in files}
        times: dict[str, list[float]] = {name: [] for name in interps}
        for _ in range(rounds):
            for name, interp in interps.items():
                for _ in range(5):
                    interp.invoke()
                start = time.perf_counter()
                for _ in range(runs):
                    interp.invoke()
                times[name].append((time.perf_counter() - start) / runs * 1e3)
        for name, t in times.items():
            result.setdefault(name, {})[f"{n} threads"] = statistics.median(t)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    body = {"cpu": cpu, "ms": time_dir(args.folder, args.threads, args.rounds, args.runs)}
    text = json.dumps(body, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
