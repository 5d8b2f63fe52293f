"""ONNX Runtime on the CPU that runs the model: dsqc int8 with 8-bit (``-B isa=vnni``) and 7-bit
(``-B isa=avx2``) weights vs FP32 vs ``quantize_static``, timed on an int8 dot-product CPU.

Build here, time there, report here::

    python -m tools.bench.isa_ort prepare            # builds the variants + SQNR → .cache/isa/
    python -m tools.bench.isa_ort time --out T.json  # on the VNNI/AMX host: onnxruntime + numpy only
    python -m tools.bench.isa_ort report T.json      # → tools/bench/ISA.md

``time`` imports neither dsqc nor onnx, so it runs where only onnxruntime and numpy are installed.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[2]
WORK = REPO / ".cache" / "isa"
MODELS = ("mnist", "resnet18_like", "mobilenetv2_like", "efficientnet_like", "small_transformer")
VARIANTS = ("fp32", "dsqc-vnni", "dsqc-avx2", "ort")


def prepare(names: list[str]) -> dict[str, Any]:
    """FP32 model, samples, the three int8 variants and their SQNR vs FP32 (measured on this machine)."""
    import shutil
    import subprocess

    from tools.bench.cases import prepare as prepare_case
    from tools.bench.worker import quantize_ort

    cases: dict[str, Any] = {}
    for name in names:
        case = prepare_case(name, WORK / "cases", quick=False)
        folder = WORK / name
        folder.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(case.fp32, folder / "fp32.onnx")
        held = dict(np.load(case.eval))
        held.pop("labels", None)
        np.savez(folder / "sample.npz", **{k: v[:1] for k, v in held.items()})
        for isa in ("vnni", "avx2"):
            out = WORK / "builds" / f"{name}-{isa}"
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(
                [
                    str(Path(sys.executable).with_name("dsqc")),
                    "-q",
                    "build",
                    case.fp32,
                    "-t",
                    "onnx",
                    "--calib",
                    case.calib,
                    "--eval-data",
                    case.eval,
                    "--no-latency",
                    "-B",
                    f"isa={isa}",
                    "-o",
                    str(out),
                ],
                check=True,
            )
            shutil.copyfile(next(out.glob("*.int8.onnx")), folder / f"dsqc-{isa}.onnx")
        quantize_ort(
            {
                "fp32": case.fp32,
                "calib": case.calib,
                "n_calib": case.n_calib,
                "out": str(folder / "ort.onnx"),
                "method": "MinMax",
            }
        )
        for leftover in folder.glob("ort.pre*"):
            leftover.unlink()
        cases[name] = {
            "sqnr_db": {v: _sqnr(folder, v, held) for v in VARIANTS[1:]},
            "calib": case.calib_data,
            "eval": case.eval_data,
        }
    (WORK / "prepared.json").write_text(json.dumps(cases, indent=1))
    return cases


def _sqnr(folder: Path, variant: str, feeds: dict[str, np.ndarray]) -> float:
    ref, got = (_outputs(folder / f"{v}.onnx", feeds) for v in ("fp32", variant))
    return float(10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / max(np.sum((ref - got) ** 2.0), 1e-30)))


def _outputs(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort

    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.concatenate(
        [
            sess.run(None, {k: v[i : i + 8] for k, v in feeds.items()})[0]
            for i in range(0, len(next(iter(feeds.values()))), 8)
        ]
    )


def time_all(rounds: int, runs: int, work: Path = WORK) -> dict[str, Any]:
    """Median ms per run of every variant (``<work>/<model>/<variant>.onnx`` beside ``fp32.onnx`` and
    ``sample.npz``) at 1 and 4 threads, the variants interleaved round by round."""
    import onnxruntime as ort

    result: dict[str, Any] = {"cpu": _cpu(), "onnxruntime": ort.__version__, "models": {}}
    for folder in sorted(p for p in work.iterdir() if (p / "fp32.onnx").exists()):
        variants = ["fp32", *sorted(p.stem for p in folder.glob("*.onnx") if p.stem != "fp32")]
        sample = dict(np.load(folder / "sample.npz"))
        result["models"][folder.name] = {}
        for threads in (1, 4):
            opts = ort.SessionOptions()
            opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
            sessions = {
                v: ort.InferenceSession(str(folder / f"{v}.onnx"), opts, providers=["CPUExecutionProvider"])
                for v in variants
            }
            times: dict[str, list[float]] = {v: [] for v in variants}
            for _ in range(rounds):
                for v, sess in sessions.items():
                    for _ in range(3):
                        sess.run(None, sample)
                    start = time.perf_counter()
                    for _ in range(runs):
                        sess.run(None, sample)
                    times[v].append((time.perf_counter() - start) / runs * 1e3)
            result["models"][folder.name][str(threads)] = {v: statistics.median(t) for v, t in times.items()}
    return result


def _cpu() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return platform.processor()
    model = next(
        (ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.startswith("model name")), "?"
    )
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    isa = [f for f in ("avx2", "avx512_vnni", "avx_vnni", "amx_int8") if f in flags]
    return f"{model} ({', '.join(isa)})"


def report(timed: dict[str, Any]) -> str:
    prepared = json.loads((WORK / "prepared.json").read_text())
    lines = [
        "# ONNX Runtime int8 on an int8 dot-product CPU (`python -m tools.bench.isa_ort`)\n",
        f"Timed on: {timed['cpu']}, onnxruntime {timed['onnxruntime']}, batch 1, median of the rounds "
        "(variants interleaved). SQNR vs FP32 on the held-out samples, measured on the build machine "
        "(AMD EPYC with AVX-512 VNNI, ORT 1.32: its fused kernels do not saturate either). "
        "`dsqc-vnni`: 8-bit weights (`-B isa=vnni`, the default there); `dsqc-avx2`: 7-bit weights "
        "(`-B isa=avx2`); `ort`: `quantize_static` (QDQ, MinMax, per-channel, U8/S8).\n",
        "| model | threads | FP32 ms | dsqc-vnni ms (×FP32) | dsqc-avx2 ms (×FP32) | ort ms (×FP32) | "
        "SQNR dB: dsqc-vnni / dsqc-avx2 / ort |",
        "|---|---:|---:|---:|---:|---:|---|",
    ]
    for name, by_threads in timed["models"].items():
        s = prepared[name]["sqnr_db"]
        for threads, t in by_threads.items():
            cells = [f"{t[v]:.3f} ({t[v] / t['fp32']:.2f}×)" for v in VARIANTS[1:]]
            lines.append(
                f"| {name} | {threads} | {t['fp32']:.3f} | {' | '.join(cells)} | "
                f"{s['dsqc-vnni']:.1f} / {s['dsqc-avx2']:.1f} / {s['ort']:.1f} |"
            )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="step", required=True)
    sub.add_parser("prepare").add_argument("--models", default=",".join(MODELS))
    t = sub.add_parser("time")
    t.add_argument("--out", type=Path, required=True)
    t.add_argument("--rounds", type=int, default=7)
    t.add_argument("--runs", type=int, default=30)
    t.add_argument("--work", type=Path, default=WORK, help="model folders (default .cache/isa)")
    r = sub.add_parser("report")
    r.add_argument("timed", type=Path)
    args = parser.parse_args(argv)
    if args.step == "prepare":
        print(json.dumps(prepare(args.models.split(",")), indent=1))
    elif args.step == "time":
        args.out.write_text(json.dumps(time_all(args.rounds, args.runs, args.work), indent=1))
    else:
        text = report(json.loads(args.timed.read_text()))
        (REPO / "tools" / "bench" / "ISA.md").write_text(text)
        print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
