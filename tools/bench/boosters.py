"""``python -m tools.bench.boosters``: each PTQ booster on and off, on the models where it should matter.

For every case and booster set: normalize → ``apply_boosters`` (CLE, SmoothQuant) → ``quantize_model``
for the ``onnx`` target → ``correct_biases`` (bias correction) → ORT with its fused int8 kernels, the
onnx target's runtime. Reported against the original FP32 model on held-out samples: output SQNR
(MiniLM: over non-padding tokens, plus the pooled-embedding cosine and Lee-50 Pearson). Weights are
per channel (dsqc's default) and, for CLE, also per tensor — the setting CLE was designed for.
Writes ``BOOSTERS.md`` and ``boosters.json`` to ``--out`` (default: this folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from dsqc.backends.onnx.profile import ONNX_PROFILE
from dsqc.backends.trt.lower import float_readers_read_float
from dsqc.calibration.data import SampleSet
from dsqc.driver.pipeline import load_and_normalize
from dsqc.metrics import cosine, sqnr_db
from dsqc.quant.boosters import BoosterOptions, apply_boosters, correct_biases
from dsqc.quant.quantize import quantize_model
from dsqc.quant.recipe import Recipe
from dsqc.verify import run_batches, session
from tools.bench.booster_models import VARIANTS, variant_path
from tools.bench.cases import Case, prepare
from tools.bench.data import batches, load_npz
from tools.bench.run import REPO, say

HERE = Path(__file__).resolve().parent
EVAL_BATCH = 16


@dataclass(frozen=True)
class Study:
    """One model, the weight granularities to try and the booster sets to compare with the baseline."""

    model: str
    boosters: dict[str, BoosterOptions]
    per_tensor_too: bool = False
    note: str = ""
    float_readers_control: bool = False


CLE = BoosterOptions(cle=True)
BC = BoosterOptions(bias_correction=True)
CLE_BC = BoosterOptions(cle=True, bias_correction=True)
STUDIES = (
    Study("inverted_residual", {"cle": CLE, "bias correction": BC}, per_tensor_too=True,
          note="1x1 expand → ReLU6 → 3x3 depthwise → ReLU6 → 1x1 project"),
    Study("mobilenetv2_like", {"cle": CLE, "bias correction": BC, "cle + bias correction": CLE_BC},
          per_tensor_too=True, note="17 inverted residuals, ReLU6, depthwise"),
    Study("mobilenetv2_relu_spread", {"cle": CLE, "bias correction": BC, "cle + bias correction": CLE_BC},
          per_tensor_too=True, note="MobileNetV2 with ReLU and depthwise channel ranges spread over 10^±1.5 "
          "(tools/bench/booster_models.py)"),
    Study("resnet18_like", {"cle": CLE, "bias correction": BC}, note="Conv-BN-ReLU-Conv basic blocks"),
    Study("small_transformer", {f"smoothquant α={a}": BoosterOptions(smoothquant=a) for a in (0.5, 0.8)},
          note="random weights: no outlier channels", float_readers_control=True),
    Study("small_transformer_outliers", {f"smoothquant α={a}": BoosterOptions(smoothquant=a)
                                         for a in (0.5, 0.8)},
          note="4 of 128 LayerNorm channels ×30 (tools/bench/booster_models.py)", float_readers_control=True),
    Study("minilm", {**{f"smoothquant α={a}": BoosterOptions(smoothquant=a) for a in (0.5, 0.8)},
                     "bias correction": BC},
          note="real weights (all-MiniLM-L6-v2): outlier channels in the residual stream",
          float_readers_control=True),
)


@dataclass
class Prepared:
    case: Case
    fp32: Any
    calib: SampleSet
    eval_feeds: dict[str, np.ndarray]
    reference: np.ndarray
    mask: Any


def _prepare(name: str, workdir: Path, quick: bool) -> Prepared:
    if name in VARIANTS:
        name = str(variant_path(name, workdir / "booster_variants"))
    case = prepare(name, workdir, quick)
    fp32 = load_and_normalize(Path(case.fp32)).model
    feeds, _ = load_npz(Path(case.calib), case.n_calib)
    held, _ = load_npz(Path(case.eval), case.n_eval)
    reference = _run(fp32, held)
    mask = held["attention_mask"].astype(bool) if case.kind == "minilm" else slice(None)
    return Prepared(case, fp32, SampleSet(feeds, case.calib_data), held, reference, mask)


def _run(proto: Any, feeds: dict[str, np.ndarray]) -> np.ndarray:
    out = run_batches(session(proto), batches(feeds, EVAL_BATCH))
    return out[proto.graph.output[0].name]


def measure(p: Prepared, options: BoosterOptions, recipe: Recipe, task: bool,
            float_readers: bool = False) -> dict[str, Any]:
    """Build the onnx-target QDQ model with ``options`` and compare it with the original FP32 model.

    ``float_readers``: a control — readers without an int8 kernel (a post-norm residual Add, LayerNorm)
    read the float tensor instead of its Q/DQ copy, as the trt lowering does.
    """
    start = time.perf_counter()
    boosted = apply_boosters(p.fp32, p.calib, options)
    quantized = quantize_model(boosted, ONNX_PROFILE, recipe, p.calib)
    qdq = quantized.model
    if options.bias_correction:
        qdq = correct_biases(boosted, qdq, p.calib)
    if float_readers:
        int8 = {n for n, d in quantized.plan.nodes.items() if d.precision.value in ("int8", "int4")}
        qdq, _ = float_readers_read_float(qdq, int8)
    seconds = time.perf_counter() - start
    got = _run(qdq, p.eval_feeds)
    ref, out = p.reference[p.mask], got[p.mask]
    row: dict[str, Any] = {"sqnr_db": sqnr_db(ref, out), "cosine": cosine(ref, out), "build_s": seconds}
    if p.case.kind == "minilm":
        from dsqc.models import minilm

        mask = p.eval_feeds["attention_mask"]
        ref, emb = minilm.mean_pool(p.reference, mask), minilm.mean_pool(got, mask)
        row["embedding_cosine"] = float(np.mean(np.sum(ref * emb, axis=1)))
        if task:
            with tempfile.TemporaryDirectory() as tmp:
                path = Path(tmp) / "q.onnx"
                path.write_bytes(qdq.SerializeToString())
                row["lee50_pearson"] = minilm.lee50_pearson(minilm.ort_run_fn(path))
    return row


def run_study(study: Study, workdir: Path, quick: bool, task: bool) -> dict[str, Any]:
    say(f"boosters: {study.model}: preparing")
    p = _prepare(study.model, workdir, quick)
    weights = {"per-channel": Recipe(method="minmax")}
    if study.per_tensor_too:
        weights["per-tensor"] = Recipe(method="minmax", per_channel=False)
    rows: dict[str, dict[str, Any]] = {}
    for granularity, recipe in weights.items():
        for label, options in {"baseline": BoosterOptions(), **study.boosters}.items():
            if granularity == "per-tensor" and options.smoothquant is not None:
                continue
            row = measure(p, options, recipe, task)
            rows[f"{granularity} | {label}"] = row
            say(f"boosters: {study.model} {granularity} {label}: SQNR {row['sqnr_db']:.2f} dB")
            if study.float_readers_control and options.smoothquant is not None:
                control = measure(p, options, recipe, task, float_readers=True)
                rows[f"{granularity} | {label}, float readers read float"] = control
        if study.float_readers_control:
            rows[f"{granularity} | baseline, float readers read float"] = measure(
                p, BoosterOptions(), recipe, task, True)
    return {"note": study.note, "calibration": p.case.calib_data, "evaluation": p.case.eval_data,
            "samples": {"calib": p.case.n_calib, "eval": p.case.n_eval}, "rows": rows}


def render(results: dict[str, Any]) -> str:
    lines = ["# PTQ boosters on and off", "",
             "Generated by `python -m tools.bench.boosters`; onnx target (uint8 activations, int8 weights "
             "in [-64, 64], minmax calibration), QDQ model run by ONNX Runtime with its fused kernels; SQNR "
             "of the output against the original FP32 model on held-out samples (MiniLM: non-padding "
             "tokens). Δ is against the baseline with the same weight granularity. Rows marked *float "
             "readers read float* are a control, not a booster: there the readers without an int8 kernel "
             "(LayerNorm, a post-norm residual Add) read the float tensor instead of its Q/DQ copy, as the "
             "trt lowering does; in post-norm transformers part of SmoothQuant's gain is this side effect "
             "(its Mul gives the projections their own quantized copy of the activation).", ""]
    for model, study in results["models"].items():
        lines += [f"## {model}", "", f"{study['note']}. Calibration: {study['calibration']}; evaluation: "
                  f"{study['evaluation']}.", ""]
        rows = study["rows"].values()
        extra = [k for k in ("embedding_cosine", "lee50_pearson") if any(k in r for r in rows)]
        lines.append("| weights | boosters | SQNR dB | Δ dB | output cosine | " +
                     "".join(f"{k.replace('_', ' ')} | " for k in extra) + "build s |")
        lines.append("|---|---|---:|---:|---:|" + "---:|" * len(extra) + "---:|")
        for key, row in study["rows"].items():
            granularity, label = key.split(" | ")
            base = study["rows"][f"{granularity} | baseline"]["sqnr_db"]
            label = label.replace("float readers read float", "*float readers read float*")
            cells = "".join(f"{row[k]:.4f} | " if k in row else "– | " for k in extra)
            lines.append(f"| {granularity} | {label} | {row['sqnr_db']:.2f} | {row['sqnr_db'] - base:+.2f} | "
                         f"{row['cosine']:.4f} | {cells}{row['build_s']:.1f} |")
        lines.append("")
    lines += [f"Machine: {results['machine']}; argv: `{results['argv']}`.", ""]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m tools.bench.boosters",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=",".join(s.model for s in STUDIES))
    parser.add_argument("--quick", action="store_true", help="fewer calibration and evaluation samples")
    parser.add_argument("--no-task", action="store_true", help="skip Lee-50 on MiniLM")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench_boosters")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    import platform

    results: dict[str, Any] = {"machine": f"{platform.machine()}, {platform.python_version()}",
                               "argv": " ".join(argv), "models": {}}
    wanted = [m.strip() for m in args.models.split(",") if m.strip()]
    for study in (s for s in STUDIES if s.model in wanted):
        results["models"][study.model] = run_study(study, args.workdir, args.quick, not args.no_task)
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "boosters.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
        (args.out / "BOOSTERS.md").write_text(render(results))
    say(f"wrote {args.out / 'BOOSTERS.md'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
