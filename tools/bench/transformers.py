"""``python -m tools.bench.transformers``: tiny BERT / GPT-2 / Llama / DeepseekV3 (random weights) and
MiniLM-L6 (real weights) built for ``onnx`` and ``trt``: plain INT8, and INT4 attention projections
(Q/K/V and output, weight-only, blocks of 32 along K) with INT8 FFN through a recipe.

Per build: output SQNR and token cosine against FP32 over the non-padding tokens of held-out samples
(onnx: ORT with its fused kernels; trt: the lowered model under reference Q/DQ semantics), MatMul/Gemm
weight bytes as stored (int4 packed two per byte, scales included), how many projections ORT turned
into MatMulNBits, and ``check_trt`` findings. Writes ``TRANSFORMERS.md`` and ``transformers.json`` to
``--out`` (default: this folder).
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from dsqc.backends.trt import check_trt
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.metrics import cosine, sqnr_db
from dsqc.verify import run_batches, session
from tools.bench.data import batches
from tools.bench.run import REPO, say

HERE = Path(__file__).resolve().parent
ARCHS = ("bert", "gpt2", "llama", "deepseek_v3", "minilm")
_BITS = {onnx.TensorProto.INT4: 4, onnx.TensorProto.UINT4: 4}


def int4_recipe() -> str:
    from dsqc.models.transformers_zoo import ATTENTION_PROJECTIONS

    return (f"[quantization]\nmethod = \"minmax\"\n\n[[override]]\nnodes = '{ATTENTION_PROJECTIONS}'\n"
            "precision = \"int4\"\n")


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of every MatMul/Gemm weight as stored: the initializer, or its DQ's inputs."""
    inits = {t.name: t for t in model.graph.initializer}
    producers = {o: n for n in model.graph.node for o in n.output}

    def size(name: str) -> int:
        t = inits[name]
        count = int(np.prod(t.dims)) if t.dims else 1
        bits = _BITS.get(t.data_type) or numpy_helper.to_array(t).dtype.itemsize * 8
        return (count * bits + 7) // 8

    total = 0
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm") or len(node.input) < 2:
            continue
        name = node.input[1]
        if name in inits:
            total += size(name)
        elif name in producers and producers[name].op_type == "DequantizeLinear":
            total += sum(size(i) for i in producers[name].input if i in inits)
    return total


def _files(work: Path, arch: str) -> tuple[Path, Path, Path]:
    model, calib, held = work / f"{arch}.onnx", work / f"{arch}_calib.npz", work / f"{arch}_eval.npz"
    if model.exists():
        return model, calib, held
    if arch == "minilm":
        from dsqc.models import minilm

        minilm.export_minilm(model, 128)
        texts = minilm.calibration_texts(96, seed=0)
        np.savez(calib, **minilm.tokenize(texts[:64], 128))
        np.savez(held, **minilm.tokenize(texts[64:], 128))
    else:
        from dsqc.models import transformers_zoo as tz

        tz.export_transformer(arch, model)
        tz.save_token_npz(calib, 128, seed=3)
        tz.save_token_npz(held, 32, seed=4)
    return model, calib, held


def _matmulnbits(path: Path) -> int:
    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
        return sum(n.op_type == "MatMulNBits" for n in onnx.load(options.optimized_model_filepath).graph.node)


def measure(work: Path, arch: str, target: str, plan: str) -> dict[str, Any]:
    model, calib, held = _files(work, arch)
    recipe = None
    if plan == "int4 attention":
        recipe = work / "int4_attention.toml"
        recipe.write_text(int4_recipe())
    out = work / f"{arch}_{target}_{plan.replace(' ', '_')}"
    result = build(BuildRequest(model=model, target=target, out_dir=out, calib=str(calib),
                                eval_data=str(held), method="minmax", recipe=recipe, measure_latency=False))
    suffix = ".trt.onnx" if target == "trt" else ".int8.onnx"
    artifact = out / next(str(a) for a in result.artifacts if str(a).endswith(suffix))
    proto = onnx.load(artifact)
    with np.load(held) as npz:
        feeds = {k: npz[k] for k in npz.files}
    keep = feeds["attention_mask"].astype(bool)
    name = "last_hidden_state"
    ref = run_batches(session(onnx.load(model)), batches(feeds, 16))[name][keep]
    got = run_batches(session(proto, optimize=target == "onnx"), batches(feeds, 16))[name][keep]
    assert result.plan is not None
    findings = check_trt(proto) if target == "trt" else []
    return {"plan_histogram": result.plan.histogram(), "sqnr_db": sqnr_db(ref, got),
            "cosine": cosine(ref, got),
            "weight_bytes": weight_bytes(proto), "fp32_weight_bytes": weight_bytes(onnx.load(model)),
            "model_bytes": artifact.stat().st_size, "fp32_model_bytes": model.stat().st_size,
            "matmulnbits": _matmulnbits(artifact) if target == "onnx" else None,
            "trt_findings": [f"{f.severity} {f.node} [{f.rule}]" for f in findings]}


def render(results: dict[str, Any]) -> str:
    lines = ["# Transformers: INT8 and INT4-attention plans", "",
             "Generated by `python -m tools.bench.transformers`. Tiny configs with random weights "
             "(`dsqc.models.transformers_zoo`, 128 calibration / 32 held-out random token sequences) and "
             "MiniLM-L6 with real weights (64 / 32 real sentences, seq 128). SQNR and cosine over the "
             "non-padding tokens. "
             "INT4 plan: `[[override]] nodes = ATTENTION_PROJECTIONS, precision = \"int4\"` (weight-only, "
             "blocks of 32 along K); FFN and attention score MatMuls stay INT8.", "",
             "| model | target | plan | SQNR dB | cosine | MatMul/Gemm weight bytes | ×FP32 | file ×FP32 | "
             "MatMulNBits | check_trt |", "|---|---|---|---:|---:|---:|---:|---:|---:|---|"]
    for key, row in results["rows"].items():
        arch, target, plan = key.split(" | ")
        nbits = "–" if row["matmulnbits"] is None else str(row["matmulnbits"])
        findings = row["trt_findings"]
        trt = "–" if target != "trt" else ("clean" if not findings else f"{len(findings)} findings")
        lines.append(f"| {arch} | {target} | {plan} | {row['sqnr_db']:.2f} | {row['cosine']:.4f} | "
                     f"{row['weight_bytes']:,} | {row['weight_bytes'] / row['fp32_weight_bytes']:.3f} | "
                     f"{row['model_bytes'] / row['fp32_model_bytes']:.3f} | {nbits} | {trt} |")
    return "\n".join([*lines, ""])


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    parser = argparse.ArgumentParser(prog="python -m tools.bench.transformers",
                                     description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--models", default=",".join(ARCHS))
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--workdir", type=Path, default=REPO / ".cache" / "bench_transformers")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    args.workdir.mkdir(parents=True, exist_ok=True)
    results: dict[str, Any] = {"argv": " ".join(argv), "rows": {}}
    for arch in (a.strip() for a in args.models.split(",") if a.strip()):
        for target in ("onnx", "trt"):
            for plan in ("int8", "int4 attention"):
                row = measure(args.workdir, arch, target, plan)
                results["rows"][f"{arch} | {target} | {plan}"] = row
                say(f"transformers: {arch} {target} {plan}: SQNR {row['sqnr_db']:.2f} dB, "
                    f"weights {row['weight_bytes']:,} B")
        args.out.mkdir(parents=True, exist_ok=True)
        (args.out / "transformers.json").write_text(json.dumps(results, indent=1, default=float) + "\n")
        (args.out / "TRANSFORMERS.md").write_text(render(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
