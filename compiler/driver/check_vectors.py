"""Check vectors: a few held-out inputs, the FP32 outputs and the artifact's own outputs, kept in the
bundle (``check/*.npy``) so ``dsqc verify`` can run the artifact again in its runtime and compare.

Runtimes: ONNX Runtime for the ``onnx``/``trt`` Q/DQ models, the LiteRT interpreter for ``.tflite``; the
``hls`` project carries its own vectors in ``tb/testbench.c`` and ``make csim`` checks them bit for bit.
``.npy`` files are byte-deterministic (``np.savez`` would stamp the time into its zip).
"""

from __future__ import annotations

import importlib
import logging
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsqc.metrics import sqnr_db

log = logging.getLogger(__name__)

CHECK_DIR = "check"
MAX_SAMPLES = 8
MAX_INPUT_BYTES = 1 << 20  # the vectors stay small: fewer samples for large inputs (at least one)
ARTIFACT_SUFFIXES = {"onnx": (".int8.onnx", ".fp32.onnx"), "trt": (".trt.onnx",),
                     "tflite": (".int8.tflite", ".fp32.tflite")}
_CSIM = re.compile(r"dsqc csim: (\d+) vectors, (\d+) mismatching values")
Feeds = dict[str, np.ndarray]


@dataclass
class Agreement:
    """One re-run: the artifact, the runtime, per-output max |diff| against the recorded run."""

    artifact: str
    runtime: str
    ok: bool
    detail: str
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)


def pick_artifact(target: str, artifacts: list[str]) -> str | None:
    """The file the runtime runs: the first artifact with the target's suffix."""
    for suffix in ARTIFACT_SUFFIXES.get(target, ()):
        for name in artifacts:
            if name.endswith(suffix):
                return name
    return None


def first_samples(batches: list[Feeds]) -> Feeds:
    """Up to ``MAX_SAMPLES`` held-out samples, fewer when their inputs exceed ``MAX_INPUT_BYTES``."""
    names = list(batches[0])
    feeds = {n: np.concatenate([b[n] for b in batches]) for n in names}
    per_sample = sum(a[:1].nbytes for a in feeds.values())
    count = max(1, min(MAX_SAMPLES, MAX_INPUT_BYTES // max(per_sample, 1), len(feeds[names[0]])))
    return {n: np.ascontiguousarray(a[:count]) for n, a in feeds.items()}


def run_artifact(path: Path, target: str, feeds: Feeds, input_names: list[str]) -> dict[str, np.ndarray]:
    """Outputs of the artifact in its runtime (float, ONNX layout where the runtime keeps it)."""
    if path.suffix == ".tflite":
        return _run_litert(path, [feeds[n] for n in input_names])
    return run_ort(str(path), feeds)


def run_ort(model: str | bytes, feeds: Feeds) -> dict[str, np.ndarray]:
    """ONNX Runtime (CPU, 1 thread, default optimizations) in the model's own batch size."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.log_severity_level = 3
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    fixed = session.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else len(next(iter(feeds.values())))
    total = len(next(iter(feeds.values())))
    try:
        parts = [session.run(names, {k: v[i:i + step] for k, v in feeds.items()})
                 for i in range(0, total - total % step, step)]
    except Exception:
        if step == 1:
            raise
        step = 1
        parts = [session.run(names, {k: v[i:i + 1] for k, v in feeds.items()}) for i in range(total)]
    return {n: np.concatenate([np.asarray(p[k], np.float32) for p in parts]) for k, n in enumerate(names)}


def _run_litert(path: Path, inputs: list[np.ndarray]) -> dict[str, np.ndarray]:
    lite = importlib.import_module("ai_edge_litert.interpreter")
    it = lite.Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    ins, outs = it.get_input_details(), it.get_output_details()
    step = int(ins[0]["shape"][0]) or 1
    total = len(inputs[0])
    results: list[list[np.ndarray]] = [[] for _ in outs]
    for i in range(0, total - total % step, step):
        for detail, x in zip(ins, inputs, strict=True):
            it.set_tensor(detail["index"], _litert_input(detail, x[i:i + step]))
        it.invoke()
        for k, detail in enumerate(outs):
            y = np.array(it.get_tensor(detail["index"]))
            if detail["dtype"] == np.int8:
                scale, zero = detail["quantization"]
                y = (y.astype(np.float32) - zero) * np.float32(scale)
            results[k].append(np.asarray(y, np.float32))
    return {d["name"]: np.concatenate(r) for d, r in zip(outs, results, strict=True)}


def _litert_input(detail: dict[str, Any], x: np.ndarray) -> np.ndarray:
    shape = tuple(int(d) for d in detail["shape"])
    if x.shape != shape and x.ndim == 4 and x.transpose(0, 2, 3, 1).shape == shape:
        x = x.transpose(0, 2, 3, 1)  # -B input_layout=nhwc
    if detail["dtype"] == np.int8:
        scale, zero = detail["quantization"]
        x = np.clip(np.rint(x / scale) + zero, -128, 127)
    return np.ascontiguousarray(x, dtype=detail["dtype"])


def record(folder: Path, target: str, artifacts: list[str], eval_feeds: list[Feeds],
           fp32_outputs: Any) -> dict[str, Any] | None:
    """Write ``check/`` into the staged bundle and return the manifest's ``agreement`` section.

    ``fp32_outputs(feeds)`` runs the FP32 model (ORT) on the chosen samples.
    """
    if target == "hls":
        return {"runtime": "make csim (gcc)", "artifact": "hls/tb/testbench.c",
                "how": "the testbench compares the C against dsqc's integer reference vectors bit for bit"}
    artifact = pick_artifact(target, artifacts)
    if artifact is None or not eval_feeds:
        return None
    feeds = first_samples(eval_feeds)
    names = list(feeds)
    got = run_artifact(folder / artifact, target, feeds, names)
    reference = fp32_outputs(feeds)
    if any(a.dtype.hasobject for a in (*feeds.values(), *got.values())):
        return {"artifact": artifact, "runtime": _runtime_name(artifact),
                "skipped": "string tensors: no vectors recorded (.npy would need pickle)"}
    check = folder / CHECK_DIR
    check.mkdir()
    section: dict[str, Any] = {"artifact": artifact, "runtime": _runtime_name(artifact),
                               "samples": len(feeds[names[0]]), "inputs": [], "outputs": []}
    for k, name in enumerate(names):
        np.save(check / f"input_{k}.npy", feeds[name], allow_pickle=False)
        section["inputs"].append({"name": name, "file": f"{CHECK_DIR}/input_{k}.npy"})
    for k, (name, value) in enumerate(got.items()):
        np.save(check / f"output_{k}.npy", value, allow_pickle=False)
        entry = {"name": name, "file": f"{CHECK_DIR}/output_{k}.npy"}
        fp32 = reference.get(name)
        if fp32 is None and len(reference) == len(got):
            fp32 = list(reference.values())[k]  # LiteRT names its outputs its own way: same order
        if fp32 is not None and fp32.shape == value.shape:
            np.save(check / f"fp32_{k}.npy", fp32, allow_pickle=False)
            entry["fp32_file"] = f"{CHECK_DIR}/fp32_{k}.npy"
        section["outputs"].append(entry)
    return section


def _runtime_name(artifact: str) -> str:
    return "LiteRT interpreter" if artifact.endswith(".tflite") else "ONNX Runtime (CPU, 1 thread)"


def rerun(folder: Path, target: str, section: dict[str, Any]) -> Agreement:
    """Run the bundle's artifact again on its recorded inputs; agreement within one output LSB (1 % of the
    output's range) — bit-exact is expected on the same machine, ±1 LSB across CPUs."""
    if target == "hls":
        return _rerun_csim(folder)
    artifact = section["artifact"]
    if "skipped" in section:
        return Agreement(artifact, section["runtime"], True, f"not re-run: {section['skipped']}")
    inputs = {e["name"]: np.load(folder / e["file"], allow_pickle=False) for e in section["inputs"]}
    try:
        got = run_artifact(folder / artifact, target, inputs, [e["name"] for e in section["inputs"]])
    except ImportError as exc:
        return Agreement(artifact, section["runtime"], True, f"not re-run: {exc.name} is not installed here")
    ok, rows, worst = True, {}, ""
    for k, entry in enumerate(section["outputs"]):
        want = np.load(folder / entry["file"], allow_pickle=False)
        have = got.get(entry["name"], list(got.values())[k] if len(got) > k else None)
        if have is None or have.shape != want.shape:
            why = f"output {entry['name']!r} missing or reshaped"
            return Agreement(artifact, section["runtime"], False, why)
        diff = float(np.max(np.abs(have - want))) if want.size else 0.0
        span = float(np.max(want) - np.min(want)) if want.size else 0.0
        row = {"max_abs_diff": diff, "tolerance": span / 100}
        if "fp32_file" in entry:
            row["sqnr_db_vs_fp32"] = float(sqnr_db(np.load(folder / entry["fp32_file"]), have))
        rows[entry["name"]] = row
        if diff > row["tolerance"]:
            ok, worst = False, f"output {entry['name']!r} differs by {diff:.4g} (> {row['tolerance']:.4g})"
    detail = worst or ("bit-exact" if all(r["max_abs_diff"] == 0 for r in rows.values()) else "within 1 LSB")
    return Agreement(artifact, section["runtime"], ok, detail, rows)


def _rerun_csim(folder: Path) -> Agreement:
    project = folder / "hls"
    if not all(shutil.which(tool) for tool in ("gcc", "make")):
        return Agreement("hls/", "make csim", True, "not re-run: gcc/make not found here")
    with tempfile.TemporaryDirectory(prefix="dsqc-verify-") as tmp:
        work = Path(tmp) / "hls"
        shutil.copytree(project, work)
        proc = subprocess.run(["make", "-s", "csim"], cwd=work, capture_output=True, text=True,
                              timeout=900, check=False)
    text = proc.stdout + proc.stderr
    found = _CSIM.search(text)
    if proc.returncode != 0 or not found or found.group(2) != "0":
        return Agreement("hls/tb/testbench.c", "make csim", False,
                         f"make csim failed (exit {proc.returncode}): {text.strip()[-200:]!r}")
    return Agreement("hls/tb/testbench.c", "make csim", True,
                     f"{found.group(1)} vectors, 0 mismatching values (bit-exact)")
