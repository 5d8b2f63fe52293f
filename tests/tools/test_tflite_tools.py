"""tools/bench/tflite_ops (op-by-op diff, XNNPACK delegation, single-op models) and tflite_carry (float32
weights truncated for the trip to the timing host) on a small CNN lowered by the tflite backend."""

from __future__ import annotations

import lzma
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("ai_edge_litert")
sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "backends" / "tflite"))
from _models import cnn, samples
from _qdq import normalize, qdq_model

from dsqc.backends.tflite.lower import lower
from dsqc.backends.tflite.writer import serialize
from tools.bench.tflite_carry import main as carry_main
from tools.bench.tflite_ops import diff, isolate, read_ops, undelegated


def _file(model: onnx.ModelProto, path: Path) -> Path:
    graph, _ = lower(model)
    names_in, names_out = [i.name for i in model.graph.input], [o.name for o in model.graph.output]
    path.write_bytes(serialize(graph, True, names_in, names_out))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1)
    it.allocate_tensors()
    it.set_tensor(it.get_input_details()[0]["index"], x)
    it.invoke()
    return np.asarray(it.get_tensor(it.get_output_details()[0]["index"]))


def test_ops_diff_delegation_and_isolation(tmp_path: Path) -> None:
    fp32 = normalize(cnn())
    f32 = _file(fp32, tmp_path / "cnn.fp32.tflite")
    i8 = _file(qdq_model(fp32, samples(fp32, 8))[0], tmp_path / "cnn.int8.tflite")
    kinds = [o.kind for o in read_ops(i8)]
    assert kinds[0] == "QUANTIZE" and "CONV_2D" in kinds and kinds[-1] == "DEQUANTIZE"
    assert any("w=int8" in o.weights and "per-channel" in o.weights for o in read_ops(i8))
    assert any(o.detail.startswith("act=RELU") for o in read_ops(f32))
    lines = diff(i8, f32)
    assert any(line.startswith("- QUANTIZE") for line in lines)
    assert any(line.startswith("+ ") for line in lines)
    assert diff(i8, i8) == []
    assert undelegated(f32) == {} and undelegated(i8) == {"SOFTMAX": 1}  # XNNPACK has no int8 SOFTMAX
    n = isolate(i8, tmp_path / "ops")
    files = sorted((tmp_path / "ops").glob("*.tflite"))
    assert n == len(files) == len(kinds) - sum(k in ("PAD", "PADV2") for k in kinds)
    for f in files:  # each single-op model loads and runs
        from ai_edge_litert.interpreter import Interpreter

        it = Interpreter(model_path=str(f), num_threads=1)
        it.allocate_tensors()
        it.invoke()


def test_carry_truncates_float_weights_only(tmp_path: Path) -> None:
    fp32 = normalize(cnn())
    f32 = _file(fp32, tmp_path / "cnn.fp32.tflite")
    assert carry_main([str(f32), "--out", str(tmp_path / "out"), "--keep", "16"]) == 0
    back = tmp_path / "back.tflite"
    back.write_bytes(lzma.decompress((tmp_path / "out" / "cnn.fp32.tflite.xz").read_bytes()))
    assert back.stat().st_size == f32.stat().st_size and read_ops(back) == read_ops(f32)
    x = samples(fp32, 1, batch=1)[0]["x"]
    ref, got = _run(f32, x), _run(back, x)
    assert np.max(np.abs(got - ref)) > 0 and 10 * np.log10(np.sum(ref ** 2) / np.sum((got - ref) ** 2)) > 30
