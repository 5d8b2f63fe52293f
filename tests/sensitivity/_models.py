"""Small models built in code for the sensitivity and mixed-precision tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OUTLIER_NODE = "conv2"


def outlier_cnn(outlier: float = 60.0, seed: int = 0) -> onnx.ModelProto:
    """input[N,3,16,16] → conv1 → Relu → conv2 → Relu → conv3 → Relu → GAP → Flatten → fc → logits[N,10].

    ``conv2`` is outlier-heavy: one weight per output channel is ``outlier`` times the channel's largest,
    so its per-channel int8 grid leaves the other weights a handful of levels.
    """
    rng = np.random.default_rng(seed)

    def conv_w(cout: int, cin: int) -> np.ndarray:
        return rng.normal(0, 1 / np.sqrt(cin * 9), (cout, cin, 3, 3)).astype(np.float32)

    w2 = conv_w(16, 8)
    w2[:, 0, 1, 1] = outlier * np.abs(w2).max(axis=(1, 2, 3))
    inits = {
        "w1": conv_w(8, 3), "b1": rng.normal(0, 0.1, 8).astype(np.float32),
        "w2": w2, "b2": rng.normal(0, 0.1, 16).astype(np.float32),
        "w3": conv_w(16, 16), "b3": rng.normal(0, 0.1, 16).astype(np.float32),
        "fc_w": rng.normal(0, 0.25, (10, 16)).astype(np.float32),
        "fc_b": rng.normal(0, 0.1, 10).astype(np.float32),
    }
    pads = {"pads": [1, 1, 1, 1]}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", **pads),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name=OUTLIER_NODE, **pads),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("Conv", ["r2", "w3", "b3"], ["c3"], name="conv3", **pads),
        helper.make_node("Relu", ["c3"], ["r3"], name="relu3"),
        helper.make_node("GlobalAveragePool", ["r3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "outlier_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def embedding_mlp(seed: int = 0) -> onnx.ModelProto:
    """ids[N,8] → Gather(table[64,32]) → MatMul(32→48) → Relu → MatMul(48→16) → out[N,8,16]."""
    rng = np.random.default_rng(seed)
    inits = {"table": rng.normal(0, 1, (64, 32)).astype(np.float32),
             "w1": rng.normal(0, 0.2, (32, 48)).astype(np.float32),
             "w2": rng.normal(0, 0.2, (48, 16)).astype(np.float32)}
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["emb"], name="embed"),
        helper.make_node("MatMul", ["emb", "w1"], ["h"], name="proj1"),
        helper.make_node("Relu", ["h"], ["hr"], name="act"),
        helper.make_node("MatMul", ["hr", "w2"], ["out"], name="proj2"),
    ]
    graph = helper.make_graph(
        nodes, "embedding_mlp", [helper.make_tensor_value_info("ids", TensorProto.INT64, ["N", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8, 16])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def save_cnn(folder: Path, outlier: float = 60.0, samples: int = 48) -> tuple[Path, Path]:
    """The outlier CNN and seeded N(0, 1) calibration data (the last fifth is held out)."""
    model, data = folder / "outlier_cnn.onnx", folder / "calib.npz"
    onnx.save(outlier_cnn(outlier), model)
    rng = np.random.default_rng(1)
    np.savez(data, input=rng.normal(0, 1, (samples, 3, 16, 16)).astype(np.float32))
    return model, data


def save_embedding(folder: Path, samples: int = 40) -> tuple[Path, Path]:
    model, data = folder / "embedding_mlp.onnx", folder / "ids.npz"
    onnx.save(embedding_mlp(), model)
    np.savez(data, ids=np.random.default_rng(2).integers(0, 64, (samples, 8)).astype(np.int64))
    return model, data


def late_input_mlp(seed: int = 0) -> onnx.ModelProto:
    """x[N,16] → MatMul → Relu → MatMul → Relu → MatMul → Add(y) → out[N,8]: input ``y`` is read last."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)
             for name, shape in (("w1", (16, 32)), ("w2", (32, 32)), ("w3", (32, 8)))]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h1"], name="mm1"),
        helper.make_node("Relu", ["h1"], ["r1"], name="relu1"),
        helper.make_node("MatMul", ["r1", "w2"], ["h2"], name="mm2"),
        helper.make_node("Relu", ["h2"], ["r2"], name="relu2"),
        helper.make_node("MatMul", ["r2", "w3"], ["h3"], name="mm3"),
        helper.make_node("Add", ["h3", "y"], ["out"], name="late_add"),
    ]
    graph = helper.make_graph(
        nodes, "late_input_mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16]),
         helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 8])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model
