"""``python -m tools.bench``: dsqc vs ONNX Runtime ``quantize_static``, side by side, in one run.

Writes ``RESULTS.md`` and ``results.json`` to ``--out`` (default: this folder). Progress on stderr.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import logging
import os
import sys
from pathlib import Path
from typing import Any, TextIO

from tools.bench.cases import DEFAULT_MODELS, prepare
from tools.bench.report import machine, render
from tools.bench.run import (
    REPO,
    bench_calibration,
    bench_case,
    default_method,
    quantizers,
    say,
    snapshot_source,
)

HERE = Path(__file__).resolve().parent
CALIB_ROWS = ("256,1024", "32")  # calibration-only rows (sample counts): full, --quick


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m tools.bench", description=__doc__.splitlines()[0])
    p.add_argument("--models", default=",".join(DEFAULT_MODELS),
                   help="comma list: mnist, minilm, any dsqc.models.zoo name, or a path to an .onnx file")
    p.add_argument("--quick", action="store_true", help="fewer samples, one latency round")
    p.add_argument("--calib-samples", type=int, help="override every case's calibration sample count")
    p.add_argument("--dsqc-methods", default="minmax,entropy,percentile,mse",
                   help="methods run besides the default build ('dsqc'); the default method is skipped")
    p.add_argument("--ort-methods", default="MinMax,Entropy")
    p.add_argument("--no-reduce-range", action="store_true", help="skip the ORT MinMax reduce_range variant")
    p.add_argument("--calib-model", default="resnet18_like",
                   help="model of the calibration-only rows ('none' to skip)")
    p.add_argument("--calib-row-samples", help="sample counts of the calibration-only rows "
                   f"(default {CALIB_ROWS[0]}, --quick {CALIB_ROWS[1]})")
    p.add_argument("--rounds", type=int, help="latency rounds (default 3, --quick 1)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per latency measurement")
    p.add_argument("--no-profile", action="store_true", help="skip ORT profiling of slow models")
    p.add_argument("--merge", action="store_true", help="update models in an existing results.json")
    p.add_argument("--eval-only", action="store_true",
                   help="reuse the quantized models and quantize numbers of the last run in --workdir; "
                        "measure SQNR, task, latency and the calibration-only row again (noisy machines)")
    p.add_argument("--out", type=Path, default=HERE)
    p.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = parse(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    lock = _lock(args.workdir)  # noqa: F841  (held until exit)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.out / "results.json"
    results: dict[str, Any] = {"models": {}, "calibration": []}
    if args.merge and json_path.exists():
        results = json.loads(json_path.read_text())
        if "history" not in results and "machine" in results:  # written before runs were listed
            old = results["machine"]
            results["history"] = [{"date": old["date"], "argv": results.get("argv", ""),
                                   "load_avg": old["load_avg"]}]
    results["machine"], results["argv"] = machine(), " ".join(argv)
    m = results["machine"]
    results.setdefault("history", []).append({"date": m["date"], "argv": results["argv"],
                                              "load_avg": m["load_avg"], "source": m["source"]})
    rounds = args.rounds or (1 if args.quick else 3)
    snap = snapshot_source(args.workdir / "src")  # workers import this frozen copy of dsqc
    for stale in [*args.workdir.rglob("*.normalized.onnx"), *args.workdir.rglob("*.placement.json")]:
        stale.unlink()  # the workers' per-model caches hold the last run's dsqc output: one run, one source
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(snap), os.environ.get("PYTHONPATH")]))
    results["dsqc_default_method"] = default_method()
    qs = quantizers([m for m in args.dsqc_methods.split(",") if m],
                    [m for m in args.ort_methods.split(",") if m], not args.no_reduce_range,
                    results["dsqc_default_method"])
    say(f"dsqc sources frozen in {snap} (commit {results['machine']['source']['commit']}, "
        f"{len(results['machine']['source']['dirty'])} files changed since)")
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:
        say(f"{name}: preparing model and samples")
        try:
            case = prepare(name, args.workdir, args.quick, args.calib_samples)
        except Exception as exc:  # report and keep going: one broken case must not sink the run
            say(f"{name}: preparation FAILED: {type(exc).__name__}: {exc}")
            continue
        results["models"][case.name] = bench_case(case, qs, rounds, args.runs, not args.no_profile,
                                                  reuse=args.eval_only)
        _write(results, args.out)
    if args.calib_model != "none":
        results["calibration"] = []
        for n in (int(x) for x in (args.calib_row_samples or CALIB_ROWS[args.quick]).split(",")):
            say(f"calibration-only row on {args.calib_model}, {n} samples")
            case = prepare(args.calib_model, args.workdir / f"calibration_{n}", args.quick, n,
                           zoo_dir=args.workdir / "zoo")
            results["calibration"].append(bench_calibration(case, repeats=1 if args.quick else 3))
            _write(results, args.out)
    _write(results, args.out)
    say(f"wrote {args.out / 'RESULTS.md'} and {json_path}")
    return 0


def _lock(workdir: Path) -> TextIO:
    """One run per workdir at a time: runs share its model files and its frozen dsqc sources."""
    workdir.mkdir(parents=True, exist_ok=True)
    handle = (workdir / ".bench.lock").open("w")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        say(f"another bench run is using {workdir}; waiting for it (or pass another --workdir)")
        fcntl.flock(handle, fcntl.LOCK_EX)
    return handle


def _write(results: dict[str, Any], out: Path) -> None:
    (out / "results.json").write_text(json.dumps(results, indent=1, default=str) + "\n")
    (out / "RESULTS.md").write_text(render(results))


if __name__ == "__main__":
    sys.exit(main())
