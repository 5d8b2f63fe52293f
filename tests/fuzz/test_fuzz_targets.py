"""Properties of whole builds on random graphs: no crash, no silent success.

``onnx``: the int8 model runs in ORT (fused kernels) with the FP32 model's outputs and shapes, and a
graph with Conv/Gemm/MatMul is really quantized. ``tflite``/``hls``: the build lowers and matches
dsqc's integer reference (LiteRT within ±1 LSB; the C testbench bit-exact), or it refuses with one
line naming the node. Anything else (a traceback, exit 1 or 3) is a bug.
"""

from __future__ import annotations

import json
import re
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from hypothesis import given

from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.errors import DsqcError
from tests.corpus._corpus import Outcome, run_in_process

from ._graphs import COMPUTE_OPS, Case, graphs
from .conftest import RAN, SEEN, fuzz_settings


def _inputs(case: Case, folder: Path) -> tuple[Path, Path, Path]:
    model, calib = folder / "fuzz.onnx", folder / "calib.npz"
    onnx.save(case.model, model)
    np.savez(calib, **case.feeds(20, seed=1))
    return model, calib, folder / "out"


def _cli(case: Case, target: str, folder: Path) -> tuple[Outcome, Path]:
    model, calib, out = _inputs(case, folder)
    args = ["build", str(model), "--target", target, "--calib", str(calib), "--no-latency", "-o", str(out)]
    return run_in_process(folder, args), out


def _refusal(line: str, out: Path, target: str) -> None:
    """One line naming the node, and nothing written."""
    assert re.search(r"node '[^']+'", line), f"refusal names no node: {line}"
    assert not out.exists()
    RAN[f"{target} refused"] += 1


def _int8_nodes(report: dict[str, Any]) -> list[str]:
    return [n for n, p in report["plan"]["nodes"].items() if p["precision"] == "int8"]


@fuzz_settings(default=25)
@given(graphs())
def test_onnx_builds_run_in_ort(case: Case) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome, out = _cli(case, "onnx", Path(tmp))
        if outcome.rc != 0:
            assert outcome.rc == 2 and len(outcome.lines) == 1, outcome
            return _refusal(outcome.lines[0], out, "onnx")
        report = json.loads((out / "report.json").read_text())
        assert report["failed"] is None
        quantized = onnx.load(out / "fuzz.int8.onnx")
        int8 = _int8_nodes(report)
        left = {n.op_type for n in quantized.graph.node} & COMPUTE_OPS
        assert not left or int8, f"{left} in the graph but nothing quantized: a silent success"
        want = ort.InferenceSession(case.model.SerializeToString(), providers=["CPUExecutionProvider"])
        if int8:
            dynamic = (report["metrics"].get("repair") or {}).get("kept") == "dynamic"  # run-time scales
            quantizers = {"DynamicQuantizeMatMul", "DynamicQuantizeLinear"} if dynamic else {"QuantizeLinear"}
            assert quantizers & {n.op_type for n in quantized.graph.node}, (dynamic, report["plan"])
            sqnrs = [float(v["sqnr_db"]) for v in report["metrics"]["verification"]["outputs"].values()]
            held_out = {k: v[-4:] for k, v in case.feeds(20, seed=1).items()}  # what verify() ran
            if any(np.any(ref) for ref in want.run(None, held_out)):  # all-zero references: SQNR is 0/0
                assert any(np.isfinite(s) for s in sqnrs), f"int8 nodes {int8} but every SQNR is {sqnrs}"
            else:
                SEEN["onnx: held-out FP32 outputs all zero (SQNR not checked)"] += 1
        feeds = case.feeds(4, seed=2)
        got = ort.InferenceSession(str(out / "fuzz.int8.onnx"), providers=["CPUExecutionProvider"])
        assert [o.name for o in got.get_outputs()] == [o.name for o in want.get_outputs()]
        for ref, value in zip(want.run(None, feeds), got.run(None, feeds), strict=True):
            assert value.shape == ref.shape and np.isfinite(value).all()
    RAN["onnx built"] += 1


def _lowered_or_refused(case: Case, target: str) -> None:
    """Through ``pipeline.build`` (the CLI's report printing is checked apart, below)."""
    with tempfile.TemporaryDirectory() as tmp:
        model, calib, out = _inputs(case, Path(tmp))
        request = BuildRequest(model=model, target=target, out_dir=out, calib=str(calib),
                               measure_latency=False)
        try:
            result = build(request)
        except DsqcError as exc:
            assert exc.exit_code == 2, exc
            return _refusal(str(exc), out, target)
        assert result.failed is None
        metrics = result.metrics[target]
        if target == "tflite" and "AveragePool" in case.ops:
            # Not compared: TFLite's AVERAGE_POOL_2D rounds its division its own way (±1 LSB), dsqc's
            # integer program does not model it, and the pool's output (it shares its input's scale)
            # is never probed, so a later layer shows the LSB amplified (5 LSB seen behind a Conv,
            # 22.7 dB output SQNR after two pools). Counted in the printed details; see the README.
            SEEN[f"{target} with AveragePool: lowered and ran, not compared"] += 1
        elif (result.metrics.get("repair") or {}).get("kept") == "dynamic":
            # LiteRT's hybrid kernels quantize each row at run time: no integer program to match (ORT's
            # reference quantizes rows alike, but float ops that differ by an ulp flip roundings); the
            # file ran in LiteRT on the held-out samples and its verdict judged that run
            assert metrics["verification"]["outputs"], metrics
            SEEN[f"{target}: repair kept the dynamic build (ran in LiteRT, not compared bit for bit)"] += 1
        elif target == "tflite":
            _within_lsb(metrics["verification"]["tensors"], target, 1)
        else:
            assert metrics["csim"]["status"] == "bit-exact", metrics["csim"]
    RAN[f"{target} built"] += 1


def _within_lsb(tensors: dict[str, Any], target: str, limit: int) -> None:
    """LiteRT vs dsqc's integer program (when it covers the graph) and vs ORT's QDQ: the first tensor
    that differs is off by at most ``limit`` LSB (a kernel's own rounding; later layers inherit it)."""
    for reference in ("vs_integer_reference", "vs_ort_qdq"):
        diff = tensors.get(reference)
        if diff is None or "skipped" in diff:
            SEEN[f"{target} {reference} not available"] += diff is not None
            continue
        first = diff.get("first_off")
        assert first is None or first["max_lsb"] <= limit, f"LiteRT {reference}: {diff}"


@fuzz_settings(default=15)
@given(graphs(max_steps=6))
def test_tflite_lowers_exactly_or_refuses(case: Case) -> None:
    _lowered_or_refused(case, "tflite")


@fuzz_settings(default=6)
@given(graphs(max_steps=5))
def test_hls_lowers_bit_exact_or_refuses(case: Case) -> None:
    _lowered_or_refused(case, "hls")


@fuzz_settings(default=10, shrink=False)
@given(graphs(max_steps=4))
def test_tflite_cli_prints_its_report(case: Case) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome, _ = _cli(case, "tflite", Path(tmp))
        assert outcome.rc in (0, 2), outcome
    RAN["tflite via the CLI"] += 1


@fuzz_settings(default=10, shrink=False)
@given(graphs(max_steps=4, compute=False))
def test_nothing_quantized_is_said_loudly(case: Case) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        outcome, out = _cli(case, "onnx", Path(tmp))
        if outcome.rc == 0 and not _int8_nodes(json.loads((out / "report.json").read_text())):
            loud = [line for line in outcome.lines if re.search(r"quantiz", line, re.I)]
            assert loud, f"nothing quantized and nothing said: {outcome.stdout.splitlines()[:1]}"
    RAN["onnx without compute ops"] += 1
