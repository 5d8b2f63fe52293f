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

from dsqc.backends.registry import get_backend
from dsqc.backends.tflite.lower import LowerOptions, lower
from dsqc.backends.tflite.profile import tflite_profile
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
    """The default profile plans attention's BATCH_MATMUL / SOFTMAX float (XNNPACK has no int8 kernel for
    them), so the QDQ model and the file agree; ``float_undelegated=false`` plans them int8, each named for
    the speed warning's hint."""
    pytest.importorskip("torch")
    from dsqc.models.export import export_onnx
    from dsqc.models.zoo import tiny_transformer

    module, example = tiny_transformer()
    path = export_onnx(module, example, tmp_path / "t.onnx", input_names=["x"], output_names=["y"])
    fp32 = normalize(onnx.load(path))
    feeds = samples(fp32, 4, batch=2)
    qdq_int8, _ = qdq_model(fp32, feeds, tflite_profile(False))
    qdq, plan = qdq_model(fp32, feeds, tflite_profile(True))
    assert get_backend("tflite").profile.float_kernel is not None  # the default
    blob_int8, stats_int8 = _write(qdq_int8)
    blob, stats = _write(qdq)
    undelegated = stats_int8.undelegated  # type: ignore[attr-defined]
    assert {n.split("/")[-1].split("_")[0] for n in undelegated} >= {"MatMul", "Softmax"}, undelegated
    assert stats.undelegated == []  # type: ignore[attr-defined]
    info, info_int8 = parse(blob), parse(blob_int8)

    def input_types(parsed: dict, kind: str) -> set[int]:
        return {parsed["tensors"][op[2][0]]["type"] for op in parsed["ops"] if op[0] == kind}

    for kind in ("BATCH_MATMUL", "SOFTMAX"):
        assert input_types(info, kind) == {FLOAT32} and FLOAT32 not in input_types(info_int8, kind)
    reasons = [d.reason for d in plan.nodes.values()]
    assert any("XNNPACK" in r and "SOFTMAX" in r for r in reasons)
    assert any("XNNPACK" in r and "BATCH_MATMUL" in r for r in reasons)
    x = feeds[0]["x"][:1]
    ref = ort_run(fp32, {"x": x})[0]
    sqnr = [10 * np.log10(np.sum(ref ** 2) / np.sum((run_tflite_isolated(b, [[x]])[0][0] - ref) ** 2))
            for b in (blob_int8, blob)]
    assert sqnr[1] > 20 and sqnr[1] >= sqnr[0] - 0.5  # float attention loses nothing
    in_ort = 10 * np.log10(np.sum(ref ** 2) / np.sum((ort_run(qdq, {"x": x})[0] - ref) ** 2))
    assert abs(in_ort - sqnr[1]) < 1.0  # the QDQ model describes the file


def _pool_model(relu: bool) -> onnx.ModelProto:
    """x[N,4,8,8] → Conv 1x1 → [Relu] → MaxPool 3/2 pads 1 (not TFLite SAME: an explicit pad)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(4)
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, (6, 4, 1, 1)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (6,)).astype(np.float32), "b")]
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv")]
    if relu:
        nodes.append(helper.make_node("Relu", ["c"], ["r"], name="relu"))
    nodes.append(helper.make_node("MaxPool", ["r" if relu else "c"], ["y"], name="pool", kernel_shape=[3, 3],
                                  strides=[2, 2], pads=[1, 1, 1, 1]))
    graph = helper.make_graph(nodes, "pool", [helper.make_tensor_value_info("x", TensorProto.FLOAT,
                                                                           ["N", 4, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6, 4, 4])], inits)
    return normalize(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))


@pytest.mark.parametrize("relu", [False, True])
@pytest.mark.parametrize("quantized", [False, True])
def test_max_pool_pads_with_pad_where_that_is_the_lowest_value(relu: bool, quantized: bool) -> None:
    """After a ReLU the pool's input never goes below 0 (int8: zero point -128), so PAD's fill is the
    lowest value and equals PADV2's; XNNPACK delegates PAD but not PADV2. A signed input keeps PADV2."""
    fp32 = _pool_model(relu)
    model = qdq_model(fp32, samples(fp32, 8))[0] if quantized else fp32
    blob, _ = _write(model)
    ops = [op[0] for op in parse(blob)["ops"]]
    assert ("PAD" in ops, "PADV2" in ops) == ((True, False) if relu else (False, True))
    feeds = samples(fp32, 1, seed=2, batch=3)[0]
    ref = ort_run(model, feeds)[0]
    got = np.concatenate([o[0] for o in run_tflite_isolated(blob, [[feeds["x"][i:i + 1]] for i in range(3)])])
    scale = max(float(np.abs(ref).max()), 1.0) / 100 if quantized else 1e-5
    assert np.max(np.abs(got - ref)) <= scale
