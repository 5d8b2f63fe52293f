"""``python -m tools.bench.real``: dsqc (default and best method) vs ONNX Runtime's best ``quantize_static``
configuration on the prepared real-weight cases → ``tools/bench/REAL.md`` and ``tools/bench/real.json``."""

from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Any

from tools.bench.real import evaluate, quantize, report
from tools.bench.real.store import REPO, load_meta, real_dir

log = logging.getLogger("tools.bench.real")
ORDER = (
    "resnet18_tv",
    "mobilenet_v2_tv",
    "efficientnet_b0_tv",
    "resnet18_kd",
    "mobilenet_v2_kd",
    "efficientnet_b0_kd",
    "efficientnet_lite0",
    "minilm",
    "nudenet_320n",
    "silero_vad",
    "mnist_cnn",
)
# Calibration samples used (the first N of the calibration file, for every quantizer): ORT's entropy and
# percentile calibrators keep every intermediate tensor of every sample in memory.
CALIB_LIMIT = {"classifier": 64, "detector": 32}


def bench_case(
    meta: dict[str, Any], folder: Path, work: Path, todo: list[quantize.Job], rounds: int, runs: int,
    reuse_ort: bool = False,
) -> dict[str, Any]:
    """Every quantization of one case, their accuracy, then the latency of the three headline models."""
    name, kind = meta["name"], meta["kind"]
    work.mkdir(parents=True, exist_ok=True)
    n_calib = min(meta["n_calib"], CALIB_LIMIT.get(kind, meta["n_calib"]))
    fp32, calib = folder / meta["model"], folder / meta["calib"]
    results: dict[str, dict[str, Any]] = {}
    for job in todo:
        res = quantize.run(job, fp32, calib, n_calib, work, reuse_ort=reuse_ort)
        results[job.label] = res
        state = f"{res['wall_s']:.0f} s" if res["ok"] else f"FAILED {res['error']}"
        log.info("%s: %s %s", name, job.label, state)
    variants = {k: Path(v["model"]) for k, v in results.items() if v["ok"]}
    rows = evaluate.evaluate(meta, folder, variants)
    best = {"dsqc": _best(rows, "dsqc"), "dsqc_best": _best(rows, "dsqc"), "ort_best": _best(rows, "ort")}
    best["dsqc"] = "dsqc" if "dsqc" in rows else None
    timed = {k: variants[k] for k in dict.fromkeys(v for v in best.values() if v)}
    feeds, _ = evaluate.held_out(meta, folder)
    sample = {k: v[:1] for k, v in feeds.items()}
    for label, lat in evaluate.latency({"fp32": fp32, **timed}, sample, rounds, runs).items():
        rows[label].update(lat)
    jobs = {k: {kk: vv for kk, vv in v.items() if kk != "command"} for k, v in results.items()}
    return {
        "noise_floor_db": evaluate.noise_floor(meta, folder),
        "kind": kind,
        "n_calib": n_calib,
        "n_eval": meta["n_eval"],
        "source": meta.get("source"),
        "inputs": meta.get("inputs"),
        "rows": rows,
        "jobs": jobs,
        **best,
    }


def _best(rows: dict[str, dict[str, Any]], tool: str) -> str | None:
    """The label of ``tool``'s run with the highest finite SQNR."""
    cands = [
        (r["sqnr_db"], k) for k, r in rows.items() if k.split("-")[0] == tool and math.isfinite(r["sqnr_db"])
    ]
    return max(cands)[1] if cands else None


def combine(sources: list[Path], out_json: Path, mds: list[Path], title: str) -> int:
    """Merge result files of separate runs (later files win per case) into one json and table."""
    parts = [json.loads(p.read_text()) for p in sources]
    cases: dict[str, Any] = {}
    for part in parts:
        cases.update(part["cases"])
    order = [n for n in ORDER if n in cases] + sorted(set(cases) - set(ORDER))
    dates = " .. ".join(dict.fromkeys(p["machine"]["date"] for p in parts))
    results = {"machine": parts[0]["machine"] | {"date": dates}, "cases": {n: cases[n] for n in order}}
    out_json.write_text(json.dumps(results, indent=1, default=float) + "\n")
    for path in mds:
        path.write_text(report.markdown(results, title))
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--cases", nargs="*", help=f"cases to run (default: all prepared, in the order {ORDER})"
    )
    parser.add_argument(
        "--data", type=Path, default=None, help="prepared cases (default $DSQC_REAL_DIR or .cache/real)"
    )
    parser.add_argument("--work", type=Path, default=None, help="quantized models (default <data>/runs)")
    parser.add_argument("--md", type=Path, default=REPO / "tools" / "bench" / "REAL.md")
    parser.add_argument("--json", type=Path, default=REPO / "tools" / "bench" / "real.json")
    parser.add_argument("--also-md", type=Path, nargs="*", default=[], help="more copies of the table")
    parser.add_argument(
        "--methods", nargs="*", default=list(quantize.DSQC_METHODS), help="dsqc --method runs"
    )
    parser.add_argument("--ort-methods", nargs="*", default=list(quantize.ORT_METHODS))
    parser.add_argument("--no-reduce-range", action="store_true", help="skip ORT's reduce_range=True runs")
    parser.add_argument("--reuse-ort", action="store_true",
                        help="evaluate ORT models an earlier run left in --work instead of rebuilding them")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--merge", action="store_true", help="keep the other cases already in --json")
    parser.add_argument(
        "--combine", type=Path, nargs="*", help="only write --md/--json from these result files"
    )
    parser.add_argument(
        "--title", default="Real-weight benchmark: dsqc vs ONNX Runtime's best quantize_static"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[real %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    if args.combine:
        return combine(args.combine, args.json, [args.md, *args.also_md], args.title)
    folder = args.data or real_dir()
    metas = load_meta(folder)
    names = args.cases or [n for n in ORDER if n in metas] + sorted(set(metas) - set(ORDER))
    missing = [n for n in names if n not in metas]
    if missing:
        print(
            f"real bench: error: {', '.join(missing)} not prepared in {folder}; run "
            "python -m tools.bench.real.prepare (torchvision venv) or see README",
            file=sys.stderr,
        )
        return 2
    results: dict[str, Any] = {"machine": report.machine(), "cases": {}}
    if args.merge and args.json.exists():
        earlier = json.loads(args.json.read_text())
        results["cases"] = {k: v for k, v in earlier["cases"].items() if k not in names}
        results["machine"] = earlier["machine"] | {
            "date": f"{earlier['machine']['date']} .. {results['machine']['date']}"
        }
    todo = quantize.jobs(
        tuple(args.methods), tuple(args.ort_methods), (False,) if args.no_reduce_range else (False, True)
    )
    for name in names:
        start = time.perf_counter()
        results["cases"].pop(name, None)
        results["cases"][name] = bench_case(
            metas[name], folder, (args.work or folder / "runs") / name, todo, args.rounds, args.runs,
            args.reuse_ort,
        )
        log.info("%s done in %.0f s", name, time.perf_counter() - start)
        args.json.write_text(json.dumps(results, indent=1, default=float) + "\n")
        text = report.markdown(results, args.title)
        for path in [args.md, *args.also_md]:
            path.write_text(text)
    print(report.markdown(results, args.title))
    return 0


if __name__ == "__main__":
    sys.exit(main())
