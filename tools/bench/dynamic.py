"""dsqc ``--mode dynamic`` (and ``auto``) vs ONNX Runtime's ``quantize_dynamic`` → ``tools/bench/DYNAMIC.md``.

Models: MiniLM-L6 (real weights, real news sentences: the prepared case of ``tools.bench.real``,
``$DSQC_REAL_DIR`` or ``.cache/real``, made by ``python -m tools.bench.real.prepare_own``) and the zoo's
small transformer (4 layers, d 128; random normal token embeddings). Every model runs in ORT on the CPU,
one request (batch 1) at a time. Reported: embedding cosine to FP32 (MiniLM: masked mean pooling,
L2-normalised; small transformer: per sample of the flattened output) mean and min, SQNR (MiniLM:
non-padding tokens), latency (one intra-op thread, interleaved rounds, median wall and CPU time), file
size.

    python -m tools.bench.dynamic [--samples 64] [--auto] [--tflite]
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dsqc.driver.cli import main as dsqc
from dsqc.driver.pipeline import normalize
from dsqc.models.minilm import mean_pool
from dsqc.verify import compare_latency, session
from tools.bench.real.store import real_dir

HERE = Path(__file__).resolve().parent
WORK = HERE.parents[1] / ".cache" / "dynamic"
log = logging.getLogger("bench.dynamic")
FINDINGS = "## Findings"  # the hand-written section below the tables survives a re-run


def ort_dynamic(src: Path, dst: Path, per_channel: bool) -> Path:
    """The baseline: ORT's own dynamic quantizer, default settings (QInt8 weights)."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(src), str(dst), weight_type=QuantType.QInt8, per_channel=per_channel)
    return dst


def dsqc_build(src: Path, out: Path, extra: list[str]) -> Path:
    start = time.perf_counter()
    code = dsqc(["build", str(src), "--target", "onnx", "--no-latency", "-q", "-o", str(out), *extra])
    if code != 0:
        raise RuntimeError(f"dsqc build {src} {extra} failed ({code})")
    log.info("dsqc %s built in %.1f s", " ".join(extra), time.perf_counter() - start)
    return next(out.glob("*.int8.onnx"))


def run_all(path: Path, feeds: list[dict[str, np.ndarray]]) -> np.ndarray:
    sess = session(onnx.load(path), threads=1)
    return np.concatenate([sess.run(None, f)[0] for f in feeds])


def scores(ref: np.ndarray, got: np.ndarray, mask: np.ndarray | None) -> dict[str, float]:
    if mask is not None:
        cos = (mean_pool(ref, mask) * mean_pool(got, mask)).sum(1)
        keep = mask.astype(bool)
        r, g = ref[keep], got[keep]
    else:
        a, b = ref.reshape(len(ref), -1), got.reshape(len(got), -1)
        cos = (a * b).sum(1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))
        r, g = ref, got
    sqnr = 10 * np.log10(np.sum(r.astype(np.float64) ** 2) / np.sum((r.astype(np.float64) - g) ** 2))
    return {"cosine_mean": float(cos.mean()), "cosine_min": float(cos.min()), "sqnr_db": float(sqnr)}


def bench_model(name: str, fp32: Path, feeds: list[dict[str, np.ndarray]], mask: np.ndarray | None,
                calib: Path | None, auto: bool) -> dict[str, Any]:
    folder = WORK / name
    folder.mkdir(parents=True, exist_ok=True)
    normalized = folder / "normalized.fp32.onnx"  # constants folded: weights behind Transpose nodes
    onnx.save(normalize(onnx.load(fp32)).model, normalized)  # become initializers ORT's quantizer sees
    variants: dict[str, Path] = {
        "FP32": fp32,
        "ORT quantize_dynamic": ort_dynamic(fp32, folder / "ort_dyn.onnx", False),
        "ORT quantize_dynamic, dsqc-normalized input": ort_dynamic(normalized, folder / "ort_n.onnx", False),
        "ORT quantize_dynamic per_channel, normalized input": ort_dynamic(normalized, folder / "ort_pc.onnx",
                                                                          True)}
    for kernel in ("fused", "itf", "integer"):
        options = ["--mode", "dynamic", "-B", f"dynamic_kernel={kernel}"]
        variants[f"dsqc dynamic ({kernel})"] = dsqc_build(fp32, folder / f"dsqc_{kernel}", options)
    if calib is not None:  # SmoothQuant needs activation statistics: the calibration data
        recipe = folder / "smoothquant.toml"
        recipe.write_text("[boosters]\nsmoothquant = 0.8\n")
        options = ["--mode", "dynamic", "--calib", str(calib), "--calib-samples", "32",
                   "--recipe", str(recipe)]
        variants["dsqc dynamic + SmoothQuant 0.8"] = dsqc_build(fp32, folder / "dsqc_sq", options)
    if auto and calib is not None:
        options = ["--mode", "auto", "--calib", str(calib), "--calib-samples", "32"]
        variants["dsqc auto"] = dsqc_build(fp32, folder / "dsqc_auto", options)
    ref = run_all(fp32, feeds)
    rows: dict[str, dict[str, Any]] = {}
    for label, path in variants.items():
        got = ref if label == "FP32" else run_all(path, feeds)
        rows[label] = {**scores(ref, got, mask), "bytes": path.stat().st_size}
    sample = feeds[0]
    models = [onnx.load(p) for p in variants.values()]
    timings = compare_latency(models, sample, rounds=8, runs=4, budget_s=60)
    for label, t in zip(variants, timings, strict=True):
        rows[label].update({"latency_ms": round(t.wall_ms, 3), "cpu_ms": round(t.cpu_ms, 3)})
    if auto and (folder / "dsqc_auto" / "report.json").exists():
        report = json.loads((folder / "dsqc_auto" / "report.json").read_text())
        nodes = report["metrics"]["dynamic"]["nodes"]
        rows["dsqc auto"]["choices"] = {m: sum(1 for c in nodes.values() if c["mode"] == m)
                                        for m in ("static", "dynamic")}
    return {"samples": len(feeds), "rows": rows}


def minilm_case(samples: int) -> tuple[Path, list[dict[str, np.ndarray]], np.ndarray, Path]:
    folder = real_dir()
    if not (folder / "minilm.onnx").exists():
        raise SystemExit(f"{folder}/minilm.onnx missing: run python -m tools.bench.real.prepare_own "
                         "(or set DSQC_REAL_DIR)")
    data = np.load(folder / "minilm.eval.npz")
    names = ("input_ids", "attention_mask", "token_type_ids")
    n = min(samples, len(data["input_ids"]))
    feeds = [{k: data[k][i:i + 1] for k in names} for i in range(n)]
    return folder / "minilm.onnx", feeds, data["attention_mask"][:n], folder / "minilm.calib.npz"


def transformer_case(samples: int) -> tuple[Path, list[dict[str, np.ndarray]], Path]:
    from dsqc.models.zoo import small_transformer
    from dsqc.torch_export import from_torch

    WORK.mkdir(parents=True, exist_ok=True)
    path = WORK / "small_transformer.onnx"
    if not path.exists():
        module, example = small_transformer()
        onnx.save(from_torch(module, example), path)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((samples, 32, 128)).astype(np.float32)
    calib = WORK / "small_transformer.calib.npz"
    np.savez(calib, input=rng.standard_normal((64, 32, 128)).astype(np.float32))
    return path, [{"input": x[i:i + 1]} for i in range(samples)], calib


def markdown(results: dict[str, Any]) -> str:
    cpu = subprocess.run(["sh", "-c", "grep -m1 'model name' /proc/cpuinfo | cut -d: -f2"],
                         capture_output=True, text=True).stdout.strip()
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                            cwd=HERE).stdout.strip()
    lines = ["# Dynamic quantization: dsqc `--mode dynamic` vs ONNX Runtime `quantize_dynamic`", "",
             f"Machine: {cpu} ({platform.machine()}), 2 cores shared with other jobs (timings noisy); "
             f"commit {commit}. `python -m tools.bench.dynamic`. ORT CPU, batch 1, one intra-op thread, "
             "interleaved rounds (median).", ""]
    for name, res in results.items():
        lines += [f"## {name} ({res['samples']} held-out samples)", "",
                  "| variant | cosine mean | cosine min | SQNR dB | latency ms | CPU ms | size MB |",
                  "|---|---|---|---|---|---|---|"]
        for label, r in res["rows"].items():
            choice = r.get("choices")
            extra = f" ({choice['dynamic']} dynamic, {choice['static']} static)" if choice else ""
            lines.append(f"| {label}{extra} | {r['cosine_mean']:.4f} | {r['cosine_min']:.4f} "
                         f"| {r['sqnr_db']:.2f} | {r['latency_ms']:.2f} | {r['cpu_ms']:.2f} "
                         f"| {r['bytes'] / 1e6:.2f} |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=64)
    p.add_argument("--auto", action="store_true", help="also build --mode auto (calibrates; slow on MiniLM)")
    p.add_argument("--models", nargs="*", default=["minilm", "small_transformer"])
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="[dynamic %(asctime)s] %(message)s", datefmt="%H:%M:%S")
    results: dict[str, Any] = {}
    if "minilm" in args.models:
        path, feeds, mask, calib = minilm_case(args.samples)
        results["MiniLM-L6 (real weights, real sentences)"] = bench_model("minilm", path, feeds, mask,
                                                                           calib, args.auto)
    if "small_transformer" in args.models:
        path, feeds, calib = transformer_case(args.samples)
        results["small transformer (zoo, random inputs)"] = bench_model("small_transformer", path, feeds,
                                                                        None, calib, args.auto)
    (HERE / "dynamic.json").write_text(json.dumps(results, indent=1) + "\n")
    target = HERE / "DYNAMIC.md"
    kept = target.read_text().partition(FINDINGS)[2] if target.exists() else ""
    target.write_text(markdown(results) + "\n" + (FINDINGS + kept if kept else ""))
    print(markdown(results))


if __name__ == "__main__":
    main()
