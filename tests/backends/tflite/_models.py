"""Small ONNX models built in code for the tflite tests."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def _model(nodes: list[onnx.NodeProto], inputs: list[onnx.ValueInfoProto],
           outputs: dict[str, list[int | str]], inits: list[onnx.TensorProto]) -> onnx.ModelProto:
    outs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, shape) for name, shape in outputs.items()]
    graph = helper.make_graph(nodes, "m", inputs, outs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model, strict_mode=True)


def cnn(seed: int = 0) -> onnx.ModelProto:
    """x[N,3,12,12] → Conv s2 p1 (explicit PAD) → Relu → depthwise 3x3 (SAME) → Clip(0,6) → MaxPool 3/2/1
    (PADV2) → Conv 1x1 → Add(skip via Conv 1x1) → Relu → Flatten (CHW→HWC FC) → Gemm → Softmax."""
    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [w("w1", (8, 3, 3, 3)), w("b1", (8,), 0.1), w("wd", (8, 1, 3, 3)), w("bd", (8,), 0.1),
             w("w2", (12, 8, 1, 1)), w("b2", (12,), 0.1), w("ws", (12, 8, 1, 1)), w("bs", (12,), 0.1),
             w("fc", (5, 12 * 3 * 3), 0.1), w("fcb", (5,), 0.1),
             numpy_helper.from_array(np.array(0.0, np.float32), "lo"),
             numpy_helper.from_array(np.array(6.0, np.float32), "hi")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1], strides=[2, 2]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wd", "bd"], ["cd"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("Clip", ["cd", "lo", "hi"], ["r2"], name="relu6"),
        helper.make_node("MaxPool", ["r2"], ["p"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["p", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Conv", ["p", "ws", "bs"], ["cs"], name="skip"),
        helper.make_node("Add", ["c2", "cs"], ["a"], name="add"),
        helper.make_node("Relu", ["a"], ["r3"], name="relu3"),
        helper.make_node("Flatten", ["r3"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1),
        helper.make_node("Softmax", ["logits"], ["probs"], name="softmax", axis=-1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 12, 12])
    return _model(nodes, [x], {"probs": ["N", 5]}, inits)


def with_op(op: str, name: str = "odd") -> onnx.ModelProto:
    """x[1,4] → Relu → ``op`` (unary) → y."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node(op, ["r"], ["y"], name=name)]
    return _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])], {"y": [1, 4]}, [])


def samples(model: onnx.ModelProto, n: int, seed: int = 1, batch: int = 4) -> list[dict[str, np.ndarray]]:
    """``n`` random batches for every graph input (batch dim fixed to ``batch``)."""
    rng = np.random.default_rng(seed)
    feeds = []
    for _ in range(n):
        feed = {}
        for value in model.graph.input:
            dims = [d.dim_value or batch for d in value.type.tensor_type.shape.dim]
            feed[value.name] = rng.standard_normal(dims).astype(np.float32)
        feeds.append(feed)
    return feeds


def misc_cnn(seed: int = 0) -> onnx.ModelProto:
    """Conv → HardSwish → AveragePool → Resize(nearest ×2) ‖ Conv → Sigmoid·x (SiLU) → Concat → Sub
    → ReduceMean(H, W) → Gemm → Tanh."""
    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [w("w1", (6, 4, 3, 3)), w("b1", (6,), 0.1), w("w2", (6, 4, 1, 1)), w("b2", (6,), 0.1),
             w("fc", (3, 12), 0.2), w("fcb", (3,), 0.1),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("HardSwish", ["c1"], ["h"], name="hswish"),
        helper.make_node("AveragePool", ["h"], ["ap"], name="avgpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Resize", ["ap", "", "scales"], ["up"], name="resize", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Conv", ["x", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Sigmoid", ["c2"], ["s"], name="sigmoid"),
        helper.make_node("Mul", ["c2", "s"], ["silu"], name="silu"),
        helper.make_node("Concat", ["up", "silu"], ["cat"], name="concat", axis=1),
        helper.make_node("Sub", ["cat", "x2"], ["d"], name="sub"),
        helper.make_node("ReduceMean", ["d"], ["m"], name="mean", axes=[2, 3], keepdims=0),
        helper.make_node("Gemm", ["m", "fc", "fcb"], ["g"], name="fc", transB=1),
        helper.make_node("Tanh", ["g"], ["y"], name="tanh"),
    ]
    nodes.insert(8, helper.make_node("Concat", ["x", "x", "x"], ["x2"], name="concat_x", axis=1))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    return _model(nodes, [x], {"y": ["N", 3]}, inits)


def embedding(seed: int = 0) -> onnx.ModelProto:
    """ids[1,6] (int64) → Gather(table) → MatMul → Add(bias) → Relu → Slice(tokens 0..3) → ReduceMean."""
    rng = np.random.default_rng(seed)
    inits = [numpy_helper.from_array(rng.normal(0, 1, (20, 8)).astype(np.float32), "table"),
             numpy_helper.from_array(rng.normal(0, 0.3, (8, 8)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, (8,)).astype(np.float32), "b"),
             numpy_helper.from_array(np.array([0], np.int64), "starts"),
             numpy_helper.from_array(np.array([3], np.int64), "ends"),
             numpy_helper.from_array(np.array([1], np.int64), "axes")]
    nodes = [
        helper.make_node("Gather", ["table", "ids"], ["e"], name="embed", axis=0),
        helper.make_node("MatMul", ["e", "w"], ["mm"], name="proj"),
        helper.make_node("Add", ["mm", "b"], ["pb"], name="bias"),
        helper.make_node("Relu", ["pb"], ["r"], name="relu"),
        helper.make_node("Slice", ["r", "starts", "ends", "axes"], ["s"], name="first3"),
        helper.make_node("ReduceMean", ["s"], ["y"], name="pool", axes=[1], keepdims=0),
    ]
    ids = helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 6])
    return _model(nodes, [ids], {"y": [1, 8]}, inits)


def grouped_cnn(seed: int = 0) -> onnx.ModelProto:
    """x[N,8,8,8] → Conv 3x3 group 2 → Relu → Conv 1x1 group 4 (8 → 16) → Relu → GlobalAveragePool →
    Flatten → Gemm: grouped convolutions that are not depthwise (RegNet, ResNeXt, ShuffleNet-style)."""
    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [w("wg", (8, 4, 3, 3)), w("bg", (8,), 0.1), w("wp", (16, 2, 1, 1)), w("bp", (16,), 0.1),
             w("fc", (5, 16), 0.2), w("fcb", (5,), 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "wg", "bg"], ["g"], name="grouped", pads=[1, 1, 1, 1], group=2),
        helper.make_node("Relu", ["g"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "wp", "bp"], ["p"], name="pointwise_grouped", group=4),
        helper.make_node("Relu", ["p"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 8, 8, 8])
    return _model(nodes, [x], {"logits": ["N", 5]}, inits)


def ceil_pool_cnn(seed: int = 0) -> onnx.ModelProto:
    """x[N,4,8,8] → Conv 3x3 → MaxPool 3/2 ceil_mode (8 → 4, floor would give 3) → Conv 1x1 → Relu →
    MaxPool 3/2 pad 1 ceil_mode (4 → 3, floor 2) → Flatten → Gemm: GoogLeNet-style ceil-mode pooling, on
    a signed tensor (the pad must hold the lowest value) and on a ReLU output."""
    rng = np.random.default_rng(seed)

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [w("w1", (6, 4, 3, 3)), w("b1", (6,), 0.1), w("w2", (6, 6, 1, 1)), w("b2", (6,), 0.1),
             w("fc", (5, 6 * 3 * 3), 0.2), w("fcb", (5,), 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("MaxPool", ["c1"], ["p1"], name="pool_signed", kernel_shape=[3, 3], strides=[2, 2],
                         ceil_mode=1),
        helper.make_node("Conv", ["p1", "w2", "b2"], ["c2"], name="conv2"),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("MaxPool", ["r2"], ["p2"], name="pool_relu", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1], ceil_mode=1),
        helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc", "fcb"], ["logits"], name="fc", transB=1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    return _model(nodes, [x], {"logits": ["N", 5]}, inits)
