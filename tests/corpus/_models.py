"""Tiny models and data for the corpus, built in code (no binary files committed)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FLOAT = TensorProto.FLOAT
Dim = int | str


def _init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def model(nodes: Sequence[onnx.NodeProto], inputs: Sequence[onnx.ValueInfoProto],
          outputs: Sequence[onnx.ValueInfoProto], inits: Sequence[onnx.TensorProto] = (),
          opset: int = 17, ir_version: int = 8,
          extra_opsets: Sequence[tuple[str, int]] = ()) -> onnx.ModelProto:
    """A model from parts; no checker (the corpus builds broken models on purpose)."""
    graph = helper.make_graph(list(nodes), "corpus", list(inputs), list(outputs), list(inits))
    opsets = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    proto = helper.make_model(graph, opset_imports=opsets)
    proto.ir_version = ir_version
    return proto


def tensor(name: str, shape: Sequence[Dim] | None, dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def mlp(batch: Dim = "N", features: int = 8, opset: int = 17, width: int = 16,
        names: Sequence[str] = ("fc1", "relu", "fc2")) -> onnx.ModelProto:
    """x[batch,features] → Gemm → Relu → Gemm → y[batch,4]."""
    rng = np.random.default_rng(0)
    inits = [_init("w1", rng.normal(0, 0.4, (width, features)).astype(np.float32)),
             _init("b1", rng.normal(0, 0.1, width).astype(np.float32)),
             _init("w2", rng.normal(0, 0.4, (4, width)).astype(np.float32)),
             _init("b2", rng.normal(0, 0.1, 4).astype(np.float32))]
    nodes = [helper.make_node("Gemm", ["x", "w1", "b1"], ["h"], name=names[0], transB=1),
             helper.make_node("Relu", ["h"], ["r"], name=names[1]),
             helper.make_node("Gemm", ["r", "w2", "b2"], ["y"], name=names[2], transB=1)]
    return model(nodes, [tensor("x", [batch, features])], [tensor("y", [batch, 4])], inits, opset)


def conv_net(batch: Dim = "N", opset: int = 17, names: Sequence[str] | None = None) -> onnx.ModelProto:
    """x[batch,3,8,8] → Conv → BN → Relu → MaxPool → Conv → Relu → GAP → Flatten → Gemm → y[batch,4]."""
    rng = np.random.default_rng(1)
    inits = [_init("w1", rng.normal(0, 0.4, (8, 3, 3, 3)).astype(np.float32)),
             _init("s", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
             _init("bb", rng.normal(0, 0.1, 8).astype(np.float32)),
             _init("m", rng.normal(0, 0.1, 8).astype(np.float32)),
             _init("v", rng.uniform(0.5, 1.5, 8).astype(np.float32)),
             _init("w2", rng.normal(0, 0.3, (8, 8, 3, 3)).astype(np.float32)),
             _init("fw", rng.normal(0, 0.3, (4, 8)).astype(np.float32)),
             _init("fb", rng.normal(0, 0.1, 4).astype(np.float32))]
    names = list(names or ["conv1", "bn", "relu1", "pool", "conv2", "relu2", "gap", "flat", "fc"])
    nodes = [helper.make_node("Conv", ["x", "w1"], ["c1"], name=names[0], pads=[1, 1, 1, 1]),
             helper.make_node("BatchNormalization", ["c1", "s", "bb", "m", "v"], ["b"], name=names[1]),
             helper.make_node("Relu", ["b"], ["r1"], name=names[2]),
             helper.make_node("MaxPool", ["r1"], ["p"], name=names[3], kernel_shape=[2, 2], strides=[2, 2]),
             helper.make_node("Conv", ["p", "w2"], ["c2"], name=names[4], pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name=names[5]),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name=names[6]),
             helper.make_node("Flatten", ["g"], ["f"], name=names[7]),
             helper.make_node("Gemm", ["f", "fw", "fb"], ["y"], name=names[8], transB=1)]
    return model(nodes, [tensor("x", [batch, 3, 8, 8])], [tensor("y", [batch, 4])], inits, opset)


def sequence_model() -> onnx.ModelProto:
    """x[batch,seq,16] (both dynamic) → MatMul → Add → Relu → MatMul → y[batch,seq,8]."""
    rng = np.random.default_rng(2)
    inits = [_init("w1", rng.normal(0, 0.3, (16, 16)).astype(np.float32)),
             _init("b1", rng.normal(0, 0.1, 16).astype(np.float32)),
             _init("w2", rng.normal(0, 0.3, (16, 8)).astype(np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="mm1"),
             helper.make_node("Add", ["h", "b1"], ["hb"], name="bias1"),
             helper.make_node("Relu", ["hb"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="mm2")]
    return model(nodes, [tensor("x", ["batch", "seq", 16])], [tensor("y", ["batch", "seq", 8])], inits)


def embedding_model() -> onnx.ModelProto:
    """ids[N,T] int64 → Gather(table[50,16]) → MatMul → Relu → y[N,T,8]."""
    rng = np.random.default_rng(3)
    inits = [_init("table", rng.normal(0, 1, (50, 16)).astype(np.float32)),
             _init("w", rng.normal(0, 0.3, (16, 8)).astype(np.float32))]
    nodes = [helper.make_node("Gather", ["table", "ids"], ["e"], name="embed"),
             helper.make_node("MatMul", ["e", "w"], ["h"], name="proj"),
             helper.make_node("Relu", ["h"], ["y"], name="relu")]
    return model(nodes, [tensor("ids", ["N", "T"], TensorProto.INT64)], [tensor("y", ["N", "T", 8])], inits)


def half_model(dtype: int) -> onnx.ModelProto:
    """x[N,8] of ``dtype`` → Cast(float) → Gemm → Relu → y[N,4] (float16/bfloat16 front ends)."""
    base = mlp()
    cast = helper.make_node("Cast", ["x_in"], ["x"], name="cast_in", to=FLOAT)
    nodes = [cast, *base.graph.node]
    return model(nodes, [tensor("x_in", ["N", 8], dtype)], [tensor("y", ["N", 4])],
                 list(base.graph.initializer))


def string_model() -> onnx.ModelProto:
    """x[N,8] strings → Cast(float) → Gemm → Relu → Gemm → y."""
    base = mlp()
    nodes = [helper.make_node("Cast", ["x_in"], ["x"], name="parse", to=FLOAT), *base.graph.node]
    return model(nodes, [tensor("x_in", ["N", 8], TensorProto.STRING)], [tensor("y", ["N", 4])],
                 list(base.graph.initializer))


def no_input_model() -> onnx.ModelProto:
    """Constant → Relu → y: a graph that takes no inputs."""
    value = numpy_helper.from_array(np.linspace(-1, 1, 8, dtype=np.float32).reshape(2, 4), "c")
    nodes = [helper.make_node("Constant", [], ["k"], name="const", value=value),
             helper.make_node("Relu", ["k"], ["y"], name="relu")]
    return model(nodes, [], [tensor("y", [2, 4])])


def if_model() -> onnx.ModelProto:
    """Gemm → If(ReduceSum > 0: Relu else Sigmoid) → Gemm: a data-dependent branch."""
    base = mlp()
    then_g = helper.make_graph([helper.make_node("Relu", ["h"], ["t_out"], name="then_relu")], "then",
                               [], [tensor("t_out", ["N", 16])])
    else_g = helper.make_graph([helper.make_node("Sigmoid", ["h"], ["e_out"], name="else_sigmoid")], "else",
                               [], [tensor("e_out", ["N", 16])])
    zero = _init("zero", np.array(0.0, np.float32))
    nodes = [base.graph.node[0],
             helper.make_node("ReduceSum", ["h"], ["total"], name="total", keepdims=0),
             helper.make_node("Greater", ["total", "zero"], ["cond"], name="positive"),
             helper.make_node("If", ["cond"], ["r"], name="branch", then_branch=then_g, else_branch=else_g),
             base.graph.node[2]]
    return model(nodes, [tensor("x", ["N", 8])], [tensor("y", ["N", 4])], [*base.graph.initializer, zero])


def loop_model() -> onnx.ModelProto:
    """Gemm → Loop 3 times (state = Relu(state) * 0.5 + h) → Gemm."""
    base = mlp()
    half = numpy_helper.from_array(np.array(0.5, np.float32), "half_c")
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Relu", ["state_in"], ["sr"], name="body_relu"),
         helper.make_node("Constant", [], ["half"], name="body_half", value=half),
         helper.make_node("Mul", ["sr", "half"], ["sm"], name="body_mul"),
         helper.make_node("Add", ["sm", "h"], ["state_out"], name="body_add")],
        "body",
        [tensor("i", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL),
         tensor("state_in", ["N", 16])],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("state_out", ["N", 16])])
    inits = [*base.graph.initializer, _init("trips", np.array(3, np.int64)), _init("go", np.array(True))]
    nodes = [base.graph.node[0],
             helper.make_node("Loop", ["trips", "go", "h"], ["r"], name="repeat", body=body),
             base.graph.node[2]]
    return model(nodes, [tensor("x", ["N", 8])], [tensor("y", ["N", 4])], inits)


def scan_model() -> onnx.ModelProto:
    """x[N,16] → MatMul → Scan over axis 0 (running sum) → Relu → y[N,16]."""
    rng = np.random.default_rng(4)
    body = helper.make_graph(
        [helper.make_node("Add", ["acc_in", "step"], ["acc_out"], name="scan_add"),
         helper.make_node("Identity", ["acc_out"], ["step_out"], name="scan_copy")],
        "scan_body", [tensor("acc_in", [16]), tensor("step", [16])],
        [tensor("acc_out", [16]), tensor("step_out", [16])])
    inits = [_init("w", rng.normal(0, 0.3, (16, 16)).astype(np.float32)),
             _init("acc0", np.zeros(16, np.float32))]
    nodes = [helper.make_node("MatMul", ["x", "w"], ["h"], name="proj"),
             helper.make_node("Scan", ["acc0", "h"], ["acc", "steps"], name="cumsum", body=body,
                              num_scan_inputs=1),
             helper.make_node("Relu", ["steps"], ["y"], name="relu")]
    return model(nodes, [tensor("x", ["N", 16])], [tensor("y", ["N", 16])], inits)


def save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path


def samples(shape: Sequence[int], seed: int = 0, dtype: type = np.float32) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 1, tuple(shape)).astype(dtype)


def npz(path: Path, **arrays: np.ndarray) -> Path:
    np.savez(path, **arrays)
    return path
