"""``python -m tools.bench.hls_int16``: a real-weight classifier on ``hls``, int8 against int16 activations.

The prepared EfficientNet-Lite0 case (real ImageNet weights; ``python -m tools.bench.real.prepare --only
efficientnet_lite0``) is built for ``--target hls`` three ways on REAL.md's split (calibration: the first 64
crops of the calibration file; verification and repair: the next 16; measured: the 512 held-out crops of
other photos): plain int8 (``--no-repair``), the default build (repair where the verdict misses), and every
activation int16 (``-B activation_bits=16``). Each build's integer program — what the C computes, bit for
bit under ``make csim`` — runs on the held-out crops in dsqc's numpy reference; SQNR and top-1 agreement
against the FP32 ONNX model in ONNX Runtime. Writes ``tools/bench/HLS_INT16.md`` and ``hls_int16.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from tools.bench.real.store import REPO, is_prepared, real_dir, tree_and_machine

VARIANTS = (("plain int8", {}, False), ("default (repair)", {}, True),
            ("every activation int16", {"activation_bits": 16}, False))


def _integer_outputs(program: Any, inputs: np.ndarray, batch: int = 32) -> np.ndarray:
    """The program's dequantized output on ``inputs`` (dsqc's integer reference, batch by batch)."""
    from dsqc.integer import quantize_inputs, run
    from dsqc.integer.reference import dequantize_outputs

    name, out = program.inputs[0].onnx_name, program.outputs[0].onnx_name
    parts = []
    for i in range(0, len(inputs), batch):
        codes = run(program, quantize_inputs(program, {name: inputs[i:i + batch]}))
        parts.append(dequantize_outputs(program, codes)[out])
    return np.concatenate(parts).astype(np.float64)


def measure(case: str, data: Path, work: Path) -> dict[str, dict[str, Any]]:
    """Build each variant, keep the program the build wrote (repair's kept one), measure it held out."""
    import onnxruntime as ort

    from dsqc.driver.build_types import BuildRequest

    calib = np.load(data / f"{case}.calib.npz")["input"]
    held = np.load(data / f"{case}.eval.npz")["input"]
    np.savez(work / "calib.npz", input=calib[:64])
    np.savez(work / "verify.npz", input=calib[64:80])
    session = ort.InferenceSession(str(data / f"{case}.onnx"), providers=["CPUExecutionProvider"])
    ref = np.concatenate([session.run(None, {"input": held[i:i + 32]})[0]
                          for i in range(0, len(held), 32)]).astype(np.float64)
    rows: dict[str, dict[str, Any]] = {}
    for label, options, repair in VARIANTS:
        request = BuildRequest(model=data / f"{case}.onnx", target="hls",
                               out_dir=work / f"out{len(rows)}", calib=str(work / "calib.npz"),
                               calib_samples=64,
                               eval_data=str(work / "verify.npz"), eval_samples=16,
                               measure_latency=False, repair=repair,
                               backend_options={**options, "tb_vectors": 4})
        result, program, seconds = build_keeping_program(request)
        kept = (result.metrics.get("repair") or {}).get("kept")
        got = _integer_outputs(program, held)
        assert result.plan is not None and result.verdict is not None
        rows[label] = {
            "sqnr_db": float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2))),
            "top1_agreement": float(np.mean(ref.argmax(1) == got.argmax(1))),
            "verdict": result.verdict.level, "repair_kept": kept,
            "verified_sqnr_db": float(result.metrics["verification"]["min_sqnr_db"]),
            "int16_tensors": sum(1 for t in program.tensors.values() if t.wide),
            "tensors": len(program.tensors),
            "activation_bytes": sum(t.nbytes for t in program.tensors.values()),
            "csim": result.metrics["hls"]["csim"]["status"], "build_s": round(seconds, 1)}
    return rows


def build_keeping_program(request: Any) -> tuple[Any, Any, float]:
    """``build(request)`` for ``hls``, with the integer program of the build it wrote (repair's kept one,
    else the plain build's) and the seconds it took."""
    from dsqc.backends.hls import backend as hls_backend
    from dsqc.driver.pipeline import build

    programs: list[Any] = []
    lower = hls_backend.HlsBackend.lower

    def keep(self: Any, job: Any) -> Any:
        lowered = lower(self, job)
        programs.append(lowered.program)
        return lowered

    hls_backend.HlsBackend.lower = keep  # type: ignore[method-assign]
    try:
        start = time.perf_counter()
        result = build(request)
        seconds = time.perf_counter() - start
    finally:
        hls_backend.HlsBackend.lower = lower  # type: ignore[method-assign]
    kept = (result.metrics.get("repair") or {}).get("kept")
    return result, programs[0] if kept in (None, "int8") else programs[-1], seconds


def markdown(case: str, rows: dict[str, dict[str, Any]], machine: str, tree: str) -> str:
    about = f"""`python -m tools.bench.hls_int16` on {machine}, tree `{tree}`. The prepared case (real
        weights) built for `--target hls` on REAL.md's split: calibration on the first 64 crops of the
        calibration file, verification and repair on the next 16, measured on the 512 held-out crops of
        other photos. Each build's integer program (what the C computes, bit-exact under `make csim`) runs
        on the held-out crops in dsqc's numpy reference, against the FP32 ONNX model in ONNX Runtime.
        Activation bytes: every tensor's buffer, as the C declares them."""
    lines = [f"# `{case}` on `hls`: int8 and int16 activations", "", " ".join(about.split()), "",
             "| build | held-out SQNR dB | top-1 agr | verdict (16 verification crops) | int16 tensors "
             "| activation bytes | csim | build s |", "|---|---:|---:|---|---:|---:|---|---:|"]
    for label, r in rows.items():
        lines.append(f"| {label} | {r['sqnr_db']:.1f} | {r['top1_agreement']:.3f} | {r['verdict']} "
                     f"({r['verified_sqnr_db']:.1f} dB) | {r['int16_tensors']} of {r['tensors']} | "
                     f"{r['activation_bytes']:,} | {r['csim']} | {r['build_s']} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", default="efficientnet_lite0")
    parser.add_argument("--data", type=Path, default=None, help="prepared cases (default: the real cache)")
    parser.add_argument("--md", type=Path, default=REPO / "tools" / "bench" / "HLS_INT16.md")
    parser.add_argument("--json", type=Path, default=REPO / "tools" / "bench" / "hls_int16.json")
    args = parser.parse_args(argv)
    data = args.data or real_dir()
    if not is_prepared("hls_int16", args.case, data):
        return 2
    tree, machine = tree_and_machine()
    with tempfile.TemporaryDirectory() as work:
        rows = measure(args.case, data, Path(work))
    args.md.write_text(markdown(args.case, rows, machine, tree))
    args.json.write_text(json.dumps({"tree": tree, "case": args.case, "rows": rows}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
