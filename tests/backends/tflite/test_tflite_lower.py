"""Lowering + writer on models built in code; every file is read back with the independent ``tflite``
package and run in LiteRT in a child process.

Tolerances: FP32 .tflite vs ONNX Runtime ≤ 1e-4 (max abs, outputs of order 1); int8 .tflite vs the
QDQ model in ONNX Runtime (float requantization) ≤ 1 output LSB.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from _models import cnn, embedding, misc_cnn, samples, with_op
from _qdq import normalize, ort_run, parse, qdq_model, run_tflite_isolated

from dsqc.backends.tflite.lower import LowerOptions, lower
from dsqc.backends.tflite.validate import validate
from dsqc.backends.tflite.writer import serialize
from dsqc.errors import UnsupportedError

INT8, INT32 = 9, 2  # tflite TensorType codes


def _write(model: onnx.ModelProto, **opts: str) -> tuple[bytes, object]:
    graph, stats = lower(model, LowerOptions(**opts))
    names_in = [i.name for i in model.graph.input]
    blob = serialize(graph, True, names_in, [o.name for o in model.graph.output])
    validate(blob)
    return blob, stats


@pytest.fixture(scope="module")
def cnn_models() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    fp32 = normalize(cnn())
    qdq, _ = qdq_model(fp32, samples(fp32, 8))
    return fp32, qdq


def test_fp32_tflite_matches_onnx(cnn_models: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    fp32, _ = cnn_models
    blob, stats = _write(fp32)
    feeds = samples(fp32, 1, seed=7, batch=6)[0]
    ref = ort_run(fp32, feeds)[0]
    got = np.concatenate([o[0] for o in run_tflite_isolated(blob, [[feeds["x"][i:i + 1]] for i in range(6)])])
    assert np.max(np.abs(got - ref)) <= 1e-4
    ops = [op[0] for op in parse(blob)["ops"]]
    assert ops.count("TRANSPOSE") == 1 and stats.interior_transposes == []  # type: ignore[attr-defined]
    assert "RELU" not in ops and "RELU6" not in ops  # fused into CONV_2D / DEPTHWISE_CONV_2D / ADD


def test_int8_layouts_padding_and_parameters(cnn_models: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    _, qdq = cnn_models
    blob, stats = _write(qdq)
    info = parse(blob)
    assert info["version"] == 3 and info["buffer0_empty"] and info["signatures"] == ["serving_default"]
    assert all(offset % 16 == 0 for offset in info["buffer_offsets"])
    ops: dict[str, tuple] = {}
    for op in info["ops"]:
        ops.setdefault(op[0], op)  # the first op of each kind
    tensors = info["tensors"]
    expected = {"PAD", "CONV_2D", "DEPTHWISE_CONV_2D", "MAX_POOL_2D", "FULLY_CONNECTED", "SOFTMAX"}
    assert expected <= set(ops) and "PADV2" not in ops  # the pool reads ReLU6's [0, 6]: PAD fills -128
    assert ops["CONV_2D"][1] == 3 and ops["FULLY_CONNECTED"][1] == 4 and ops["SOFTMAX"][1] == 2
    conv_w = tensors[ops["CONV_2D"][2][1]]
    assert conv_w["name"] == "w1" and conv_w["shape"] == [8, 3, 3, 3] and conv_w["dim"] == 0  # OHWI
    dw = ops["DEPTHWISE_CONV_2D"]
    dw_w, dw_b, dw_x = tensors[dw[2][1]], tensors[dw[2][2]], tensors[dw[2][0]]
    assert dw_w["shape"] == [1, 3, 3, 8] and dw_w["dim"] == 3 and len(dw_w["scale"]) == 8  # 1HWC
    assert dw_b["type"] == INT32 and np.allclose(dw_b["scale"], np.float32(dw_x["scale"][0]) *
                                                 np.asarray(dw_w["scale"], np.float32), rtol=1e-6)
    assert all(t["type"] != INT8 or t["scale"] for t in tensors)
    softmax_out = tensors[ops["SOFTMAX"][3][0]]
    assert softmax_out["scale"] == [pytest.approx(1 / 256)] and softmax_out["zero_point"] == [-128]
    assert stats.interior_transposes == [] and stats.edge_transposes == 1  # type: ignore[attr-defined]


def test_int8_matches_qdq_model(cnn_models: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    """Every tensor before the softmax is bit-exact (see test_build); TFLite's int8 SOFTMAX (exp lookup
    table) is within 2 LSB of the exact float softmax. The planner fixes Softmax's output at (1/256, -128)
    as the tflite profile demands, so no requantize step follows it."""
    fp32, fixed = cnn_models[0], True
    qdq, _ = qdq_model(fp32, samples(fp32, 8), fixed_outputs=fixed)
    blob, stats = _write(qdq)
    assert bool(stats.requantize) != fixed  # type: ignore[attr-defined]
    feeds = samples(fp32, 1, seed=9, batch=8)[0]
    ref = ort_run(qdq, feeds)[0]
    got = np.concatenate([o[0] for o in run_tflite_isolated(blob, [[feeds["x"][i:i + 1]] for i in range(8)])])
    assert np.max(np.abs(got - ref)) <= (2 if fixed else 3) / 256 + 1e-6


def test_flatten_weights_permuted_to_hwc(cnn_models: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    fp32, _ = cnn_models
    graph, _ = lower(fp32)
    fc = next(t for t in graph.tensors if t.name == "fc")
    original = onnx.numpy_helper.to_array(next(i for i in fp32.graph.initializer if i.name == "fc"))
    assert fc.data is not None
    np.testing.assert_array_equal(fc.data, original.reshape(5, 12, 3, 3).transpose(0, 2, 3, 1).reshape(5, -1))


def test_int8_io_and_nhwc_input(cnn_models: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    _, qdq = cnn_models
    blob, stats = _write(qdq, io="int8", input_layout="nhwc")
    info = parse(blob)
    ops = [op[0] for op in info["ops"]]
    assert "TRANSPOSE" not in ops and ops[0] != "QUANTIZE" and "DEQUANTIZE" not in ops
    x = info["tensors"][info["ops"][0][2][0]]
    assert x["type"] == INT8 and x["shape"] == [1, 12, 12, 3] and x["scale"]
    assert stats.edge_transposes == 0  # type: ignore[attr-defined]


def test_transformer_lowers_to_fc_bmm_gelu_and_float_layernorm(tmp_path: Path) -> None:
    pytest.importorskip("torch")
    from dsqc.models.export import export_onnx
    from dsqc.models.zoo import tiny_transformer

    module, example = tiny_transformer()
    path = export_onnx(module, example, tmp_path / "t.onnx", input_names=["x"], output_names=["y"])
    fp32 = normalize(onnx.load(path))
    feeds = samples(fp32, 4, batch=2)
    qdq, _ = qdq_model(fp32, feeds)
    blob32, _ = _write(fp32)
    blob8, stats = _write(qdq)
    ops8 = {op[0] for op in parse(blob8)["ops"]}
    assert {"FULLY_CONNECTED", "BATCH_MATMUL", "GELU", "SOFTMAX", "RSQRT"} <= ops8
    assert "ERF" not in ops8 and stats.float_nodes  # type: ignore[attr-defined]
    x = feeds[0]["x"][:1]
    ref = ort_run(fp32, {"x": x})[0]
    got32 = run_tflite_isolated(blob32, [[x]])[0][0]
    got8 = run_tflite_isolated(blob8, [[x]])[0][0]
    assert np.max(np.abs(got32 - ref)) <= 1e-4
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((got8 - ref) ** 2)) > 20


def test_unsupported_node_is_named() -> None:
    with pytest.raises(UnsupportedError, match=r"node 'odd' \(Floor\)"):
        lower(with_op("Floor"))



def test_more_ops_fp32_and_int8() -> None:
    fp32 = normalize(misc_cnn())
    qdq, _ = qdq_model(fp32, samples(fp32, 8), fixed_outputs=True)
    blob32, _ = _write(fp32)
    blob8, stats = _write(qdq)
    ops8 = {op[0] for op in parse(blob8)["ops"]}
    assert {"HARD_SWISH", "AVERAGE_POOL_2D", "RESIZE_NEAREST_NEIGHBOR", "LOGISTIC", "MUL", "CONCATENATION",
            "SUB", "MEAN", "TANH"} <= ops8
    assert stats.interior_transposes == [] and stats.float_nodes == []  # type: ignore[attr-defined]
    feeds = samples(fp32, 1, seed=5, batch=4)[0]
    ref = ort_run(fp32, feeds)[0]
    inputs = [[feeds["x"][i:i + 1]] for i in range(4)]
    got32 = np.concatenate([o[0] for o in run_tflite_isolated(blob32, inputs)])
    got8 = np.concatenate([o[0] for o in run_tflite_isolated(blob8, inputs)])
    assert np.max(np.abs(got32 - ref)) <= 1e-4
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((got8 - ref) ** 2)) > 25


def test_embedding_gather_slice() -> None:
    fp32 = normalize(embedding())
    ids = np.random.default_rng(2).integers(0, 20, (1, 6)).astype(np.int64)
    qdq, _ = qdq_model(fp32, [{"ids": np.random.default_rng(s).integers(0, 20, (1, 6))} for s in range(8)])
    blob32, _ = _write(fp32)
    blob8, _ = _write(qdq)
    assert {"GATHER", "FULLY_CONNECTED", "STRIDED_SLICE", "MEAN"} <= {op[0] for op in parse(blob8)["ops"]}
    ref = ort_run(fp32, {"ids": ids})[0]
    got32 = run_tflite_isolated(blob32, [[ids]])[0][0]
    got8 = run_tflite_isolated(blob8, [[ids]])[0][0]
    assert np.max(np.abs(got32 - ref)) <= 1e-4
    assert 10 * np.log10(np.sum(ref ** 2) / np.sum((got8 - ref) ** 2)) > 25


def test_same_input_same_bytes(cnn_models: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    _, qdq = cnn_models
    assert _write(qdq)[0] == _write(qdq)[0]
