"""Small FP32 models for the learned-rounding tests: a CNN (Conv → Relu → Conv → Relu → Flatten → Gemm)
and an MLP of MatMul + Add layers fed correlated inputs (what gives GPTQ's Hessian off-diagonals)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from _graphs import init, make_model, randn, value
from onnx import helper

from dsqc.calibration.data import SampleSet
from dsqc.metrics import sqnr_db
from dsqc.verify import session

CNN_SHAPE = (3, 8, 8)
MLP_K = 64


def cnn() -> onnx.ModelProto:
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1] * 4),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1] * 4, strides=[2, 2]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("Flatten", ["r2"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "w3", "b3"], ["y"], name="fc", transB=1)]
    inits = [init("w1", randn((8, 3, 3, 3), seed=1, scale=0.3)), init("b1", randn((8,), seed=2, scale=0.1)),
             init("w2", randn((8, 8, 3, 3), seed=3, scale=0.2)), init("b2", randn((8,), seed=4, scale=0.1)),
             init("w3", randn((10, 128), seed=5, scale=0.1)), init("b3", randn((10,), seed=6, scale=0.1))]
    return make_model(nodes, [value("x", ("N", *CNN_SHAPE))], [value("y", ("N", 10))], inits)


def cnn_samples(n: int, seed: int) -> SampleSet:
    """Image-like inputs: smooth (4x4 upsampled to 8x8) with a little pixel noise, so neighbouring
    inputs correlate and the rounding of one weight can cancel another's error."""
    coarse = randn((n, CNN_SHAPE[0], 4, 4), seed=seed).repeat(2, axis=2).repeat(2, axis=3)
    x = coarse + 0.1 * randn((n, *CNN_SHAPE), seed=seed + 1)
    return SampleSet({"x": x.astype(np.float32)}, f"smooth seeded images, seed {seed}")


def mlp() -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], name="mm1"),
             helper.make_node("Add", ["m1", "b1"], ["a1"], name="add1"),
             helper.make_node("Relu", ["a1"], ["r1"], name="relu1"),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"], name="mm2"),
             helper.make_node("Add", ["m2", "b2"], ["y"], name="add2")]
    inits = [init("w1", randn((MLP_K, 96), seed=7, scale=0.15)), init("b1", randn((96,), seed=8, scale=0.1)),
             init("w2", randn((96, 32), seed=9, scale=0.15)), init("b2", randn((32,), seed=10, scale=0.1))]
    return make_model(nodes, [value("x", ("N", 4, MLP_K))], [value("y", ("N", 4, 32))], inits)


def mlp_samples(n: int, seed: int) -> SampleSet:
    """Correlated features: 8 latent factors mixed into 64 channels, plus a little noise."""
    latent = randn((n, 4, 8), seed=seed)
    mix = randn((8, MLP_K), seed=99)
    x = latent @ mix + 0.05 * randn((n, 4, MLP_K), seed=seed + 1)
    return SampleSet({"x": x.astype(np.float32)}, f"correlated, seed {seed}")


def output_sqnr(fp32: onnx.ModelProto, qdq: onnx.ModelProto, held: SampleSet) -> float:
    ref = session(fp32).run(None, held.feeds)[0]
    got = session(qdq).run(None, held.feeds)[0]
    return sqnr_db(ref, got)


def weight_ints(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    """The 8- and 4-bit constants DequantizeLinear nodes read (weights; not int32 biases), by DQ name."""
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    found = {n.name: inits.get(n.input[0]) for n in proto.graph.node if n.op_type == "DequantizeLinear"}
    return {name: a.astype(np.int64) for name, a in found.items() if a is not None and a.dtype.itemsize == 1}


def scales(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in proto.graph.initializer}
    return {n.name: inits[n.input[1]] for n in proto.graph.node if n.op_type == "DequantizeLinear"}


def save(proto: onnx.ModelProto, path: Path) -> Path:
    path.write_bytes(proto.SerializeToString())
    return path
