"""Time .tflite files in LiteRT with XNNPACK on the CPU that runs this (`python -m tools.bench.litert_time`).

Imports only numpy and ``ai_edge_litert`` (unzipped wheels on ``PYTHONPATH`` are enough), so it runs on a
host without dsqc: build the files here, time them there. Interpreter created and tensors allocated
outside the timing, 5 warm-ups, the files interleaved round by round, median ms per run::

    python -m tools.bench.litert_time DIR --threads 1 4 --sessions 4 --out times.json   # DIR: *.tflite
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


def time_dir(folder: Path, threads: list[int], rounds: int, runs: int,
             sessions: int = 1) -> dict[str, dict[str, float]]:
    """Median ms per run of every file. With ``sessions`` > 1 the interpreters are built anew that many
    times, in a shuffled order, and the rounds are split among them: where the memory an interpreter
    lands in changes its speed (seen on the Xeon host: two copies of one file built one after the
    other agree, files built at other times differ by up to 12 %), that luck is averaged out."""
    files = sorted(folder.glob("*.tflite"))
    result: dict[str, dict[str, float]] = {}
    order = np.random.default_rng(0)
    for n in threads:
        times: dict[str, list[float]] = {f.name: [] for f in files}
        per_session: dict[str, list[float]] = {f.name: [] for f in files}
        for session in range(sessions):
            built = [files[i] for i in order.permutation(len(files))] if session else files
            interps = {f.name: _interpreter(f, n) for f in built}
            for _ in range(max(1, rounds // sessions)):
                for name, interp in interps.items():
                    for _ in range(5):
                        interp.invoke()
                    start = time.perf_counter()
                    for _ in range(runs):
                        interp.invoke()
                    times[name].append((time.perf_counter() - start) / runs * 1e3)
            for name in interps:
                per_session[name].append(statistics.median(times[name][-max(1, rounds // sessions):]))
            del interps
        for name, t in times.items():
            result.setdefault(name, {})[f"{n} threads"] = statistics.median(t)
            if sessions > 1:  # the spread of the sessions' medians: how much interpreter placement moves it
                result[name][f"{n} threads sessions"] = [round(v, 4) for v in per_session[name]]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("folder", type=Path)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--sessions", type=int, default=1, help="build the interpreters anew this many times")
    parser.add_argument("--out", type=Path)
    args = parser.parse_args(argv)
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), platform.processor())
    body = {"cpu": cpu, "ms": time_dir(args.folder, args.threads, args.rounds, args.runs, args.sessions)}
    text = json.dumps(body, indent=1)
    if args.out:
        args.out.write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
