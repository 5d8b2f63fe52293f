"""``python -m tools.bench.hls_detector``: YOLOv8n (nudenet 320n, real weights) on ``hls``: the network up to
its head maps on the FPGA, the decode on the host.

The whole model is refused by ``hls`` (its decode: a Softmax over axis 1 of the DFL, per-anchor strides,
boxes in pixels concatenated with scores in [0, 1]). ``--outputs`` builds the part that computes the six
head maps (per scale: 64 box-distribution logits, 18 class logits), which is what an FPGA deployment runs;
the host runs the model's own decode, cut from the same ONNX file, on the dequantized maps. The build
uses REAL.md's split (calibration: the first 32 images of the calibration file; verification: the next
16); measured on the 64 held-out images: each map's SQNR, and the boxes after decode against FP32's own
(``compiler/detection.py``: score ≥ 0.25, class-wise NMS 0.45, same class and IoU ≥ 0.5). The maps come
from the build's integer program in dsqc's numpy reference, which is what the C computes (bit-exact under
``make csim`` at build time). Writes ``tools/bench/HLS_DETECTOR.md`` and ``hls_detector.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from tools.bench.hls_int16 import build_keeping_program
from tools.bench.real.store import REPO, is_prepared, real_dir, tree_and_machine

CASE = "nudenet_320n"
HEAD = tuple([f"/model.22/cv2.{i}/cv2.{i}.2/Conv_output_0" for i in range(3)]
             + [f"/model.22/cv3.{i}/cv3.{i}.2/Conv_output_0" for i in range(3)])
BOX_BRANCH_INT16 = "[[override]]\nnodes = '/model\\.22/cv2\\..*'\nprecision = \"int16\"\n"
VARIANTS = (("default", {}, None),  # label, -B options, recipe text
            ("box branch int16 (recipe: /model.22/cv2.* precision int16)", {}, BOX_BRANCH_INT16),
            ("every activation int16 (-B activation_bits=16)", {"activation_bits": 16}, None))


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray], batch: int = 8) -> dict[str, np.ndarray]:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    count = len(next(iter(feeds.values())))
    parts = [session.run(names, {k: v[i:i + batch] for k, v in feeds.items()})
             for i in range(0, count, batch)]
    return {name: np.concatenate([p[j] for p in parts]) for j, name in enumerate(names)}


def _decode_tail(model: onnx.ModelProto) -> onnx.ModelProto:
    """The model's decode: the head maps in, ``output0`` out."""
    inferred = onnx.shape_inference.infer_shapes(model)
    return onnx.utils.Extractor(inferred).extract_model(list(HEAD), [o.name for o in model.graph.output])


def _integer_maps(program: Any, images: np.ndarray, batch: int = 4) -> dict[str, np.ndarray]:
    from dsqc.integer import quantize_inputs, run
    from dsqc.integer.reference import dequantize_outputs

    name = program.inputs[0].onnx_name
    parts = [dequantize_outputs(program, run(program, quantize_inputs(program, {name: images[i:i + batch]})))
             for i in range(0, len(images), batch)]
    return {k: np.concatenate([p[k] for p in parts]).astype(np.float32) for k in parts[0]}


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    ref, got = ref.astype(np.float64), got.astype(np.float64)
    return float(10 * np.log10(np.sum(ref**2) / np.sum((ref - got) ** 2)))


def measure(data: Path, work: Path) -> dict[str, Any]:
    from dsqc.driver.build_types import BuildRequest
    from dsqc.driver.pipeline import build
    from dsqc.errors import DsqcError

    model_path = data / f"{CASE}.onnx"
    model = onnx.load(model_path)
    calib = np.load(data / f"{CASE}.calib.npz")["images"]
    held = np.load(data / f"{CASE}.eval.npz")["images"]
    np.savez(work / "calib.npz", images=calib[:32])
    np.savez(work / "verify.npz", images=calib[32:48])
    common = {"model": model_path, "target": "hls", "calib": str(work / "calib.npz"), "calib_samples": 32,
              "eval_data": str(work / "verify.npz"), "eval_samples": 16, "measure_latency": False}
    try:
        build(BuildRequest(out_dir=work / "whole", **common))  # type: ignore[arg-type]
        whole = "built"
    except DsqcError as exc:
        whole = str(exc).split(";")[0]
    fp32 = Fp32Side.of(model, held)
    rows = {}
    for label, options, recipe in VARIANTS:
        recipe_path = None
        if recipe:
            recipe_path = work / "recipe.toml"
            recipe_path.write_text(recipe)
        request = BuildRequest(out_dir=work / f"head{len(rows)}", outputs=HEAD, recipe=recipe_path,
                               backend_options=options, **common)  # type: ignore[arg-type]
        rows[label] = _head_row(request, fp32, held)
    start = time.perf_counter()
    onnx_build = build(BuildRequest(out_dir=work / "onnx", outputs=HEAD, **{**common, "target": "onnx"}))
    seconds = time.perf_counter() - start
    artifact = next(p for p in onnx_build.artifacts if str(p).endswith(".int8.onnx"))
    maps = _run(onnx.load(work / "onnx" / artifact), {"images": held})
    label = "`onnx` target, same cut (ORT's int8 kernels)"
    rows[label] = {**fp32.decoded(maps), "build_s": round(seconds, 1)}
    return {"whole_model": whole, "images": len(held), "rows": rows}


@dataclass
class Fp32Side:
    """What every row is measured against, run once: FP32's output and head maps on the held-out
    images, and the model's own decode (head maps in, its output out)."""

    reference: np.ndarray
    maps: dict[str, np.ndarray]
    tail: onnx.ModelProto
    output: str

    @classmethod
    def of(cls, model: onnx.ModelProto, held: np.ndarray) -> Fp32Side:
        from dsqc.model_cut import cut_at

        out = model.graph.output[0].name
        reference = _run(model, {"images": held})[out]
        maps = _run(cut_at(model, HEAD, CASE), {"images": held})
        tail = _decode_tail(model)
        replayed = _run(tail, maps)[out]
        assert np.allclose(replayed, reference, atol=1e-3), "the cut decode does not reproduce FP32"
        return cls(reference, maps, tail, out)

    def decoded(self, maps: dict[str, np.ndarray]) -> dict[str, Any]:
        """Each head map's SQNR against FP32's, and the boxes after the model's own decode of ``maps``."""
        from dsqc.detection import detection_summary

        decoded = _run(self.tail, {name: maps[name] for name in HEAD})[self.output]
        return {"head_maps": {name: round(_sqnr(self.maps[name], maps[name]), 2) for name in HEAD},
                "output0_sqnr_db": round(_sqnr(self.reference, decoded), 2),
                "boxes": detection_summary(self.output, self.reference, decoded)}


def _head_row(request: Any, fp32: Fp32Side, held: np.ndarray) -> dict[str, Any]:
    """Build the head maps, keep the program the build wrote, decode its maps on the host."""
    result, program, seconds = build_keeping_program(request)
    kept = (result.metrics.get("repair") or {}).get("kept")
    hls = result.metrics["hls"]
    est = hls.get("estimates") or {}
    return {**fp32.decoded(_integer_maps(program, held)),
            "verdict": result.verdict.level if result.verdict else None, "repair_kept": kept,
            "int16_tensors": f"{sum(t.wide for t in program.tensors.values())} of {len(program.tensors)}",
            "activation_bytes": f"{est.get('activation_bytes'):,}", "cycles": est.get("cycles"),
            "csim": hls["csim"]["status"], "csim_vectors": hls["csim"].get("vectors"),
            "build_s": round(seconds, 1)}


def markdown(result: dict[str, Any], machine: str, tree: str) -> str:
    rows = result["rows"]
    first = next(iter(rows.values()))
    about = f"""`python -m tools.bench.hls_detector` on {machine}, tree `{tree}`: nudenet's YOLOv8n (real
        weights, 18 classes) built for `--target hls` with `--outputs` at its six head maps (REAL.md's split:
        32 calibration images, 16 to verify), measured on the {result['images']} held-out images. The maps
        are each build's integer program in dsqc's numpy reference (the C, bit for bit: `make csim`
        {first['csim']} on {first['csim_vectors']} vectors at build time); the host decode is the model's
        own, cut from the same file, run in ONNX Runtime on the dequantized maps. Boxes against FP32's on
        the same images: score ≥ 0.25, class-wise NMS 0.45, same class and IoU ≥ 0.5. The last row is
        the `onnx` target cut at the same maps, run in ONNX Runtime. REAL.md's `onnx` row builds the whole
        model (decode included), whose verdict repairs it to a mixed plan: box agreement 0.933, mAP@0.5
        0.822."""
    lines = ["# YOLOv8n on `hls`: head maps on the FPGA, decode on the host", "", " ".join(about.split()), "",
             f"The whole model for `hls`: {result['whole_model']}.", "",
             "| build | box maps SQNR dB | class maps SQNR dB | output0 SQNR dB | FP32 / found / matched "
             "boxes | recall | precision | box agreement | mAP@0.5 | int16 tensors | activation bytes | "
             "csim | build s |", "|---|---|---|---:|---|---:|---:|---:|---:|---:|---:|---|---:|"]
    for label, r in rows.items():
        maps = list(r["head_maps"].values())
        b = r["boxes"]
        lines.append(f"| {label} | {' / '.join(f'{v:.1f}' for v in maps[:3])} | "
                     f"{' / '.join(f'{v:.1f}' for v in maps[3:])} | {r['output0_sqnr_db']:.1f} | "
                     f"{b['fp32_boxes']} / {b['boxes']} / {b['matched']} | {b['recall']:.3f} | "
                     f"{b['precision']:.3f} | {b['agreement']:.3f} | {b['map50']:.3f} | "
                     f"{r.get('int16_tensors', '—')} | {r.get('activation_bytes', '—')} | "
                     f"{r.get('csim', '—')} | {r['build_s']} |")
    lines += ["", f"Estimated cycles at parallelism 1 (default build): {first['cycles']:,}. Box maps: the "
              "three 64-channel box-distribution outputs (strides 8, 16, 32); class maps: the three 18-class "
              "logit outputs."]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=None, help="prepared cases (default: the real cache)")
    parser.add_argument("--md", type=Path, default=REPO / "tools" / "bench" / "HLS_DETECTOR.md")
    parser.add_argument("--json", type=Path, default=REPO / "tools" / "bench" / "hls_detector.json")
    args = parser.parse_args(argv)
    data = args.data or real_dir()
    if not is_prepared("hls_detector", CASE, data):
        return 2
    tree, machine = tree_and_machine()
    with tempfile.TemporaryDirectory() as work:
        result = measure(data, Path(work))
    args.md.write_text(markdown(result, machine, tree))
    args.json.write_text(json.dumps({"tree": tree, "case": CASE, **result}, indent=1, default=float) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
