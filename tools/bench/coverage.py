"""``python -m tools.bench.coverage``: outside architectures × every target, through the command line.

Each torchvision graph of ``tools.bench.real.vision.COVERAGE`` (random init, BatchNorm statistics from
real photos; prepared by ``python -m tools.bench.real.prepare --coverage``) is built with ``dsqc build
--target onnx|tflite|hls|trt`` at default settings. The table says whether the build went through, its
verdict, the output SQNR ORT measured against FP32, the target runtime's own check (LiteRT's SQNR,
gcc csim) and the first line of any error: a failing row is a lowering or a normalization a user's
model would hit. Writes ``tools/bench/COVERAGE.md`` and ``coverage.json``.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from tools.bench.real.store import REPO, real_dir
from tools.bench.real.vision import COVERAGE

log = logging.getLogger("tools.bench.coverage")
TARGETS = ("onnx", "tflite", "hls", "trt")


def build(arch: str, target: str, data: Path, work: Path) -> dict[str, Any]:
    """One ``dsqc build``: exit code, seconds, and what its report.json says."""
    out = work / f"{arch}-{target}"
    cmd = [str(Path(sys.executable).with_name("dsqc")), "build", str(data / f"{arch}.onnx"), "--target",
           target, "--calib", str(data / f"{arch}.calib.npz"), "--eval-data", str(data / f"{arch}.eval.npz"),
           "--no-latency", "-o", str(out)]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    row: dict[str, Any] = {"rc": proc.returncode, "seconds": round(time.perf_counter() - start, 1)}
    if proc.returncode:
        err = proc.stderr.splitlines()
        lines = [t for t in err if t.startswith("dsqc: error")] or err
        row["error"] = (lines or ["(no output)"])[-1][:200]
        return row
    report = json.loads((out / "report.json").read_text())
    metrics = report.get("metrics") or {}
    ver = metrics.get("verification") or {}
    row["verdict"] = (report.get("verdict") or {}).get("level")
    row["sqnr_db"] = ver.get("min_sqnr_db")
    row["top1_agreement"] = ver.get("top1_agreement")
    row["runtime"] = _runtime_check(target, metrics)
    row["repaired"] = _repaired(metrics)
    return row


def _repaired(metrics: dict[str, Any]) -> str:
    """Which build repair kept in place of plain int8 ('' where none was needed or none was better)."""
    rep = metrics.get("repair") or {}
    kept = rep.get("kept")
    if kept == "mixed":
        above = rep.get("nodes_above_int8")
        return f"mixed plan, {above} node{'' if above == 1 else 's'} above int8"
    return "dynamic" if kept == "dynamic" else ""


def _runtime_check(target: str, metrics: dict[str, Any]) -> str:
    part = metrics.get(target) or {}
    if target == "tflite":
        ver = part.get("verification") or {}
        exact = (ver.get("tensors") or {}).get("vs_integer_reference") or {}
        alone = exact.get("per_op") or {}
        same = (f", vs the integer reference {exact['tensors_exact']}/{exact['tensors']} tensors bit-exact"
                + (f" end to end, {alone['ops_exact']}/{alone['ops']} ops alone (max {alone['max_lsb']} LSB)"
                   if alone.get("ops") else "")
                if exact.get("tensors") else "")
        return f"LiteRT {ver.get('min_sqnr_db', float('nan')):.2f} dB{same}" if ver else ""
    if target == "hls":
        csim = part.get("csim") or {}
        return f"gcc csim {csim.get('status')}, {csim.get('vectors', 0)} vectors" if csim else ""
    if target == "trt":
        engine = part.get("engine") or {}
        return "engine built" if engine.get("built") else f"QDQ model + cache; engine: {engine.get('reason')}"
    return ""


def markdown(results: dict[str, dict[str, dict[str, Any]]], machine: str, tree: str) -> str:
    trees = sorted({str(r.get("tree", tree)) for targets in results.values() for r in targets.values()})
    built = f"tree `{tree}`" if trees == [tree] else \
        "trees " + ", ".join(f"`{t}`" for t in trees) + " (each row's in coverage.json; `--merge` added rows)"
    about = " ".join(f"""`python -m tools.bench.coverage` on {machine}, {built}. torchvision graphs
        (random init, BatchNorm statistics from 30×8 real photo crops in train mode; 64 calibration / 32
        held-out crops of other photos), `dsqc build --target T` at default settings. SQNR: the worst
        output (or channel scale group) of the QDQ model in ORT vs FP32 on the held-out crops. These
        graphs carry random weights: read the verdicts as what the build says, not as model
        quality. A build whose plain int8 verdict is degraded or collapsed repairs itself (README
        "Repair") on these same held-out crops, so a repaired row's SQNR is measured on the data its
        search saw; `--no-repair` gives plain int8. "(repaired: …)" names the build repair kept, where
        the row records it (rows of trees before `e64f7c7` do not).""".split())
    lines = ["# Coverage: outside architectures on every target", "", about, "",
             "| model | what it brings | target | build | verdict | SQNR dB | top-1 agr | target's own check "
             "| s |",
             "|---|---|---|---|---|---:|---:|---|---:|"]
    for arch, targets in results.items():
        for target, r in targets.items():
            if r["rc"]:
                status, verdict, sqnr, top1, check = "**failed**", "", "", "", r.get("error", "")
            else:
                status, verdict = "ok", str(r.get("verdict"))
                verdict += f" (repaired: {r['repaired']})" if r.get("repaired") else ""
                sqnr = f"{r['sqnr_db']:.1f}" if r.get("sqnr_db") is not None else ""
                top1 = f"{r['top1_agreement']:.2f}" if r.get("top1_agreement") is not None else ""
                check = r.get("runtime", "")
            lines.append(f"| {arch} | {COVERAGE.get(arch, '')} | {target} | {status} | {verdict} | {sqnr} | "
                         f"{top1} | {check} | {r['seconds']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None,
                        help="prepared graphs (default <real cache>/coverage)")
    parser.add_argument("--work", type=Path, default=Path("/tmp/dsqc-coverage"))
    parser.add_argument("--archs", nargs="*", default=list(COVERAGE))
    parser.add_argument("--targets", nargs="*", default=list(TARGETS))
    parser.add_argument("--md", type=Path, default=REPO / "tools" / "bench" / "COVERAGE.md")
    parser.add_argument("--json", type=Path, default=REPO / "tools" / "bench" / "coverage.json")
    parser.add_argument("--merge", action="store_true",
                        help="keep the rows of --json that this run does not build (each row names its tree)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[coverage %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    data = args.data or real_dir() / "coverage"
    missing = [a for a in args.archs if not (data / f"{a}.onnx").is_file()]
    if missing:
        print(f"coverage: {', '.join(missing)} not prepared in {data}; run "
              "`python -m tools.bench.real.prepare --coverage` (torchvision venv) first", file=sys.stderr)
        return 2
    tree = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip()
    results: dict[str, dict[str, dict[str, Any]]] = {}
    if args.merge and args.json.is_file():
        earlier = json.loads(args.json.read_text())
        results = {arch: {t: {"tree": earlier.get("tree"), **r} for t, r in targets.items()}
                   for arch, targets in earlier["results"].items()}
    for arch in args.archs:
        for target in args.targets:
            row = build(arch, target, data, args.work)
            results.setdefault(arch, {})[target] = {"tree": tree, **row}
            log.info("%s %s: %s", arch, target, row.get("error") or row.get("verdict"))
    results = {arch: results[arch] for arch in [*COVERAGE, *results] if arch in results}
    machine = f"{platform.processor() or platform.machine()}, {platform.python_version()}"
    args.md.write_text(markdown(results, machine, tree))
    args.json.write_text(json.dumps({"tree": tree, "results": results}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
