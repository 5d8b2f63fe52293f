"""Small models for the TensorRT backend tests, built in code: FP32 graphs and hand-made QDQ graphs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

F = TensorProto.FLOAT


def _w(name: str, shape: Sequence[int], seed: int, scale: float = 0.3) -> onnx.TensorProto:
    values = np.random.default_rng(seed).normal(0, scale, tuple(shape)).astype(np.float32)
    return numpy_helper.from_array(values, name)


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto], outputs: list[onnx.ValueInfoProto],
           inits: list[onnx.TensorProto], opset: int = 17, name: str = "m") -> onnx.ModelProto:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8 if opset < 21 else 10
    onnx.checker.check_model(model)
    return model


def residual_cnn() -> onnx.ModelProto:
    """x[N,4,12,12] → Conv-Relu → Conv → Add(skip x) → Relu → MaxPool → GAP → Flatten → Gemm → y[N,5]."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "x"], ["s"], name="add"),
        helper.make_node("Relu", ["s"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("MaxPool", ["r3"], ["p"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["p"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "wf", "bf"], ["y"], name="fc", transB=1),
    ]
    inits = [_w("w1", (4, 4, 3, 3), 1), _w("b1", (4,), 2, 0.1), _w("w2", (4, 4, 3, 3), 3),
             _w("b2", (4,), 4, 0.1), _w("w3", (8, 4, 3, 3), 5), _w("b3", (8,), 6, 0.1),
             _w("wf", (5, 8), 7), _w("bf", (5,), 8, 0.1)]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["N", 4, 12, 12])],
                  [helper.make_tensor_value_info("y", F, ["N", 5])], inits, name="residual_cnn")


def attention_block(d: int = 16, seq: int = 6) -> onnx.ModelProto:
    """Post-LN (BERT-style), one head: x[N,S,D] → MatMul q/k/v → softmax(q·kᵀ/√d)·v → MatMul →
    Add(x) → LN → MatMul → Add(LN out) → LN → y. ``x`` feeds int8 MatMuls and the float residual Add."""
    nodes = [
        helper.make_node("MatMul", ["x", "wq"], ["q"], name="mm_q"),
        helper.make_node("MatMul", ["x", "wk"], ["k"], name="mm_k"),
        helper.make_node("MatMul", ["x", "wv"], ["v"], name="mm_v"),
        helper.make_node("Transpose", ["k"], ["kt"], name="kt", perm=[0, 2, 1]),
        helper.make_node("MatMul", ["q", "kt"], ["qk"], name="mm_qk"),
        helper.make_node("Mul", ["qk", "inv_sqrt_d"], ["qk_s"], name="scale"),
        helper.make_node("Softmax", ["qk_s"], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a"], name="mm_pv"),
        helper.make_node("MatMul", ["a", "wo"], ["o"], name="mm_o"),
        helper.make_node("Add", ["o", "x"], ["res"], name="residual"),
        helper.make_node("LayerNormalization", ["res", "g1", "be1"], ["h"], name="ln1", axis=-1),
        helper.make_node("MatMul", ["h", "wf"], ["ff"], name="mm_ff"),
        helper.make_node("Add", ["ff", "h"], ["res2"], name="residual2"),
        helper.make_node("LayerNormalization", ["res2", "g2", "be2"], ["y"], name="ln2", axis=-1),
    ]
    ones = np.ones(d, np.float32)
    inits = [numpy_helper.from_array(ones * 1.1, "g1"), numpy_helper.from_array(ones * 0.05, "be1"),
             numpy_helper.from_array(ones * 0.9, "g2"), numpy_helper.from_array(ones * -0.05, "be2"),
             *(_w(name, (d, d), seed) for seed, name in enumerate(("wq", "wk", "wv", "wo", "wf"), start=11)),
             numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "inv_sqrt_d")]
    return _model(nodes, [helper.make_tensor_value_info("x", F, ["N", seq, d])],
                  [helper.make_tensor_value_info("y", F, ["N", seq, d])], inits, name="attention")


def save_with_calib(model: onnx.ModelProto, folder: Path, name: str, n: int = 48) -> tuple[Path, Path]:
    """Write ``<name>.onnx`` and ``<name>_calib.npz`` (N(0,1) samples for the model's one input)."""
    path, npz = folder / f"{name}.onnx", folder / f"{name}_calib.npz"
    onnx.save(model, path)
    inp = model.graph.input[0]
    dims = [d.dim_value for d in inp.type.tensor_type.shape.dim][1:]
    samples: dict[str, Any] = {inp.name: np.random.default_rng(3).normal(0, 1, (n, *dims)).astype(np.float32)}
    np.savez(npz, **samples)
    return path, npz


def qdq_conv(zero_point: int = 0, weight_axis: int | None = 0, scale: float = 0.02,
             act_dtype: int = TensorProto.INT8, q_chain: bool = False, opset: int = 17,
             relu_after_q: bool = False) -> onnx.ModelProto:
    """x → Q → DQ → Conv(DQ(int8 weight, per channel on ``weight_axis``)) → y, with planted faults.

    ``q_chain``: a second Q reads the first Q's output. ``relu_after_q``: the Conv output is
    quantized and a Relu reads the DQ (Q/DQ between Conv and the activation TensorRT folds).
    """
    np_act = helper.tensor_dtype_to_np_dtype(act_dtype)
    weight = np.random.default_rng(0).integers(-127, 128, (4, 3, 3, 3)).astype(np.int8)
    w_scale = np.full(4 if weight_axis == 0 else 3, 0.01, np.float32) if weight_axis is not None \
        else np.array(0.01, np.float32)
    inits = [numpy_helper.from_array(np.array(scale, np.float32), "x_scale"),
             numpy_helper.from_array(np.array(zero_point, np_act), "x_zero"),
             numpy_helper.from_array(weight, "w_q"), numpy_helper.from_array(w_scale, "w_scale"),
             numpy_helper.from_array(np.zeros(w_scale.shape, np.int8), "w_zero")]
    w_attrs: dict[str, Any] = {"axis": weight_axis} if weight_axis is not None else {}
    nodes = [helper.make_node("QuantizeLinear", ["x", "x_scale", "x_zero"], ["xq"], name="q_x"),
             helper.make_node("DequantizeLinear", ["xq", "x_scale", "x_zero"], ["xd"], name="dq_x"),
             helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w",
                              **w_attrs),
             helper.make_node("Conv", ["xd", "w"], ["c"], name="conv", pads=[1, 1, 1, 1])]
    out = "c"
    if q_chain:
        nodes[1] = helper.make_node("QuantizeLinear", ["xq", "x_scale", "x_zero"], ["xqq"], name="q_again")
        nodes.append(helper.make_node("DequantizeLinear", ["xqq", "x_scale", "x_zero"], ["xd"], name="dq_x"))
    if relu_after_q:
        nodes += [helper.make_node("QuantizeLinear", ["c", "x_scale", "x_zero"], ["cq"], name="q_c"),
                  helper.make_node("DequantizeLinear", ["cq", "x_scale", "x_zero"], ["cd"], name="dq_c"),
                  helper.make_node("Relu", ["cd"], ["r"], name="relu")]
        out = "r"
    graph = helper.make_graph(nodes, "qdq_conv", [helper.make_tensor_value_info("x", F, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info(out, F, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
