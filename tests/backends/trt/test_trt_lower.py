"""TensorRT lowering passes: int32 bias DQ folding (exact), float readers, FP16 islands."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from trt_models import qdq_conv, residual_cnn

from dsqc.backends.trt import check_trt
from dsqc.backends.trt.fp16 import to_fp16
from dsqc.backends.trt.lower import float_readers_read_float, fold_int32_dequantize
from dsqc.errors import UnsupportedError
from dsqc.verify import session

X = np.random.default_rng(5).normal(0, 1, (1, 3, 8, 8)).astype(np.float32)


def _with_int32_bias() -> onnx.ModelProto:
    model = qdq_conv()
    bias = np.random.default_rng(1).integers(-5000, 5000, 4).astype(np.int32)
    model.graph.initializer.extend([
        numpy_helper.from_array(bias, "b_q"),
        numpy_helper.from_array(np.float32(0.02 * 0.01) * np.arange(1, 5, dtype=np.float32), "b_scale"),
        numpy_helper.from_array(np.zeros(4, np.int32), "b_zero")])
    model.graph.node.insert(3, helper.make_node("DequantizeLinear", ["b_q", "b_scale", "b_zero"], ["b"],
                                                name="dq_b", axis=0))
    conv = next(n for n in model.graph.node if n.op_type == "Conv")
    conv.input.append("b")
    return model


def test_int32_bias_fold_is_exact() -> None:
    model = _with_int32_bias()
    assert ("dq_b", "dtype") in {(f.node, f.rule) for f in check_trt(model)}
    folded, names = fold_int32_dequantize(model)
    assert names == ["b"] and check_trt(folded) == []
    assert not any(t.data_type == TensorProto.INT32 for t in folded.graph.initializer)
    # ONNX semantics (graph optimizations off, no fused int8 kernels): bit-identical outputs.
    before = session(model, optimize=False).run(None, {"x": X})[0]
    assert np.array_equal(before, session(folded, optimize=False).run(None, {"x": X})[0])


def _fan_out(reader: str) -> onnx.ModelProto:
    """x → Q → DQ → MatMul and → ``reader`` (LayerNormalization / Softmax / Add)."""
    d = 4
    inits = [numpy_helper.from_array(np.array(0.05, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z"),
             numpy_helper.from_array(np.eye(d, dtype=np.float32), "w"),
             numpy_helper.from_array(np.ones(d, np.float32), "g")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("MatMul", ["xd", "w"], ["m"], name="mm")]
    if reader == "LayerNormalization":
        nodes.append(helper.make_node(reader, ["xd", "g"], ["r"], name="reader"))
    elif reader == "Softmax":
        nodes.append(helper.make_node(reader, ["xd"], ["r"], name="reader"))
    else:
        nodes.append(helper.make_node("Add", ["m", "xd"], ["r"], name="reader"))
    graph = helper.make_graph(nodes, "fan", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, d])],
                              [helper.make_tensor_value_info("r", TensorProto.FLOAT, [2, d]),
                               helper.make_tensor_value_info("m", TensorProto.FLOAT, [2, d])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


@pytest.mark.parametrize("reader", ["LayerNormalization", "Softmax", "Add"])
def test_float_readers_read_the_float_tensor(reader: str) -> None:
    lowered, rewired = float_readers_read_float(_fan_out(reader))
    nodes = {n.name: n for n in lowered.graph.node}
    assert rewired == ["reader"] and "x" in nodes["reader"].input
    assert nodes["mm"].input[0] == "xd"
    onnx.checker.check_model(lowered)


def test_plan_int8_nodes_and_conv_residual_skips_keep_their_dq() -> None:
    _, rewired = float_readers_read_float(_fan_out("Softmax"), int8_nodes={"reader"})
    assert rewired == []
    model = qdq_conv()  # Conv output + DQ(x) into an Add: the skip of a Conv+Add residual stays int8
    model.graph.node.append(helper.make_node("Add", ["c", "xd"], ["s"], name="add"))
    model.graph.output[0].name = "s"
    assert float_readers_read_float(model)[1] == []


def test_fp16_keeps_the_interface_and_runs_in_ort() -> None:
    fp32 = residual_cnn()
    half, report = to_fp16(fp32)
    onnx.checker.check_model(half)
    interface = (*half.graph.input, *half.graph.output)
    assert [i.type.tensor_type.elem_type for i in interface] == [TensorProto.FLOAT] * 2
    assert next(o.version for o in half.opset_import if o.domain == "") >= 19
    assert report.converted == 8 and report.scales == 0
    x = np.random.default_rng(0).normal(0, 1, (2, 4, 12, 12)).astype(np.float32)
    ref, got = session(fp32).run(None, {"x": x})[0], session(half).run(None, {"x": x})[0]
    assert np.abs(got - ref).max() / np.abs(ref).max() < 5e-3


def test_fp16_qdq_scales_round_and_are_reported() -> None:
    half, report = to_fp16(fold_int32_dequantize(_with_int32_bias())[0])
    assert check_trt(half) == []
    assert report.scales == 1 + 4 and 0 < report.scale_max_rel_change < 2 ** -11
    q = next(n for n in half.graph.node if n.op_type == "QuantizeLinear")
    scale = next(t for t in half.graph.initializer if t.name == q.input[1])
    assert scale.data_type == TensorProto.FLOAT16
    session(half).run(None, {"x": X})


def test_fp16_keeps_resize_scales_float32_and_refuses_tiny_scales() -> None:
    nodes = [helper.make_node("Resize", ["x", "", "scales"], ["y"], name="resize", mode="nearest")]
    graph = helper.make_graph(nodes, "rs",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 2, 2])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 1, 4, 4])],
                              [numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")])
    half, _ = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(half, full_check=True)
    session(half).run(None, {"x": np.ones((1, 1, 2, 2), np.float32)})
    tiny = qdq_conv(scale=1e-9)
    with pytest.raises(UnsupportedError, match="no FP16 value"):
        to_fp16(tiny)
