"""What the tflite target does for LiteRT's XNNPACK delegate (issue 15): no RESHAPE in front of
FULLY_CONNECTED (it flattens its input itself, like the TFLite converter's files), and ``float_undelegated``
keeps attention's BATCH_MATMUL / SOFTMAX in float, where XNNPACK has no int8 kernel, so that the whole
graph stays one delegate partition. Numerics are checked against ONNX Runtime in LiteRT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _models import cnn, samples
from _qdq import normalize, ort_run, parse, qdq_model, run_tflite_isolated

from dsqc.backends.tflite.lower import LowerOptions, lower
from dsqc.backends.tflite.validate import validate
from dsqc.backends.tflite.writer import serialize

FLOAT32 = 0  # tflite TensorType code


def _write(model: onnx.ModelProto, **opts: object) -> tuple[bytes, object]:
    graph, stats = lower(model, LowerOptions(**opts))  # type: ignore[arg-type]
    blob = serialize(graph, True, [i.name for i in model.graph.input], [o.name for o in model.graph.output])
    validate(blob)
    return blob, stats


@pytest.mark.parametrize("quantized", [False, True])
def test_flatten_before_fc_is_no_op(quantized: bool) -> None:
    """cnn(): Flatten of an NHWC [N,3,3,12] tensor → Gemm. FULLY_CONNECTED reads the 4-D tensor (HWC
    order, weight columns permuted); the outputs still match ONNX Runtime."""
    fp32 = normalize(cnn())
    model = qdq_model(fp32, samples(fp32, 8), fixed_outputs=True)[0] if quantized else fp32
    blob, _ = _write(model)
    info = parse(blob)
    ops = [op[0] for op in info["ops"]]
    assert "RESHAPE" not in ops
    fc = next(op for op in info["ops"] if op[0] == "FULLY_CONNECTED")
    assert info["tensors"][fc[2][0]]["shape"] == [1, 3, 3, 12]
    feeds = samples(fp32, 1, seed=3, batch=4)[0]
    ref = ort_run(model, feeds)[0]
    got = np.concatenate([o[0] for o in run_tflite_isolated(blob, [[feeds["x"][i:i + 1]] for i in range(4)])])
    assert np.max(np.abs(got - ref)) <= (2 / 256 + 1e-6 if quantized else 1e-4)


def test_float_undelegated_attention(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dsqc.models.export import export_onnx
    from dsqc.models.zoo import tiny_transformer

    module, example = tiny_transformer()
    path = export_onnx(module, example, tmp_path / "t.onnx", input_names=["x"], output_names=["y"])
    fp32 = normalize(onnx.load(path))
    feeds = samples(fp32, 4, batch=2)
    qdq, _ = qdq_model(fp32, feeds)
    blob_int8, _ = _write(qdq)
    blob, stats = _write(qdq, float_undelegated=True)
    info, info_int8 = parse(blob), parse(blob_int8)

    def input_types(parsed: dict, kind: str) -> set[int]:
        return {parsed["tensors"][op[2][0]]["type"] for op in parsed["ops"] if op[0] == kind}

    for kind in ("BATCH_MATMUL", "SOFTMAX"):
        assert input_types(info, kind) == {FLOAT32} and FLOAT32 not in input_types(info_int8, kind)
    reasons = stats.float_reasons  # type: ignore[attr-defined]
    assert any("XNNPACK" in r and "SOFTMAX" in r for r in reasons.values())
    assert any("XNNPACK" in r and "BATCH_MATMUL" in r for r in reasons.values())
    x = feeds[0]["x"][:1]
    ref = ort_run(fp32, {"x": x})[0]
    sqnr = [10 * np.log10(np.sum(ref ** 2) / np.sum((run_tflite_isolated(b, [[x]])[0][0] - ref) ** 2))
            for b in (blob_int8, blob)]
    assert sqnr[1] > 20 and sqnr[1] >= sqnr[0] - 0.5  # float attention loses nothing
