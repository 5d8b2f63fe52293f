"""``python -m tools.bench.multi_target``: one 4-target build against the four single-target builds.

Each build runs in its own ``dsqc build`` subprocess (same flags, ``--no-latency``: the build's own
FP32-vs-int8 timing would dominate and is not what is compared), one after the other; the wall time is
the subprocess's. Writes ``tools/bench/MULTI_TARGET.md`` with the time ratio (4 targets vs the slowest
single target) and the 4-target build's agreement table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

from tools.bench.cases import prepare

HERE = Path(__file__).parent
TARGETS = ("onnx", "trt", "tflite", "hls")


def timed_build(case_fp32: str, calib: str, eval_data: str, target: str, out: Path) -> float:
    cmd = [sys.executable, "-m", "dsqc", "-q", "build", case_fp32, "--target", target, "--calib", calib,
           "--eval-data", eval_data, "--no-latency", "-o", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{proc.stderr[-2000:]}")
    return seconds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", default="mobilenetv2_like")
    parser.add_argument("--work", type=Path, default=Path(".cache/bench-multi"))
    parser.add_argument("--out", type=Path, default=HERE / "MULTI_TARGET.md")
    args = parser.parse_args(argv)
    case = prepare(args.model, args.work, quick=True)
    singles = {t: timed_build(case.fp32, case.calib, case.eval, t, args.work / "single" / t) for t in TARGETS}
    multi_dir = args.work / "multi"
    both = timed_build(case.fp32, case.calib, case.eval, ",".join(TARGETS), multi_dir)
    agreement = json.loads((multi_dir / "agreement.json").read_text())
    slowest = max(singles, key=lambda t: singles[t])
    lines = [f"# One build, four targets (`python -m tools.bench.multi_target --model {args.model}`)", "",
             f"Machine: {platform.processor() or platform.machine()}, {os.cpu_count()} cores, shared with "
             f"other jobs (timings noisy); {case.n_calib} calibration / {case.n_eval} held-out samples "
             "(seeded random inputs), `--no-latency`, each build a fresh `dsqc build` process.", "",
             "| build | wall s |", "|---|---:|"]
    lines += [f"| `--target {t}` | {s:.1f} |" for t, s in singles.items()]
    lines += [f"| `--target {','.join(TARGETS)}` | {both:.1f} |", "",
              f"4 targets / slowest single target ({slowest}): **{both / singles[slowest]:.2f}×** "
              f"(goal ≤ 1.5×); / sum of the four single builds: {both / sum(singles.values()):.2f}×.", "",
              f"## Agreement of the 4-target build ({agreement['samples']} held-out samples, each artifact "
              "in its own runtime)", "", "| target | runtime | min SQNR vs FP32 dB | top-1 vs FP32 |",
              "|---|---|---:|---:|"]
    for target, m in agreement["vs_fp32"].items():
        top1 = f"{m['top1_agreement']:.1%}" if "top1_agreement" in m else "—"
        lines.append(f"| {target} | {m['runtime']} | {m['min_sqnr_db']:.2f} | {top1} |")
    lines += ["", "| pair | max diff (LSB of the coarsest output scale) | max abs diff | top-1 agreement |",
              "|---|---:|---:|---:|"]
    for p in agreement["pairwise"]:
        lsb = "—" if p["max_lsb"] is None else str(p["max_lsb"])
        top1 = f"{p['top1_agreement']:.1%}" if "top1_agreement" in p else "—"
        lines.append(f"| {p['a']} vs {p['b']} | {lsb} | {p['max_abs_diff']:.4g} | {top1} |")
    if agreement["not_run"]:
        lines += ["", "Not run here: " + "; ".join(f"{t}: {w}" for t, w in agreement["not_run"].items())]
    args.out.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
