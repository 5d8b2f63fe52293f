"""Small models built in code and their canonical QDQ form for the integer and HLS tests.

``quantize`` = dsqc's planner + ``InsertQDQ`` with min/max ranges from ORT:
``dsqc.quant.quantize.quantize_model`` without the streaming calibration, so these tests run on their own.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dsqc.ir import Model
from dsqc.pass_infra import PassManager
from dsqc.passes import FuseConvBatchNorm
from dsqc.passes.insert_qdq import InsertQDQ
from dsqc.quant.planner import Range, finalize
from dsqc.quant.profile import TargetProfile
from dsqc.quant.quantize import placed
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import QuantPlan

FLOAT = TensorProto.FLOAT


def minmax_ranges(fp32: onnx.ModelProto, names: Sequence[str],
                  feeds: dict[str, np.ndarray]) -> dict[str, Range]:
    model = onnx.ModelProto()
    model.CopyFrom(fp32)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(helper.make_tensor_value_info(name, FLOAT, None))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    values = session.run(list(names), feeds)
    return {n: Range(float(v.min()), float(v.max())) for n, v in zip(names, values, strict=True)}


def fuse_bn(fp32: onnx.ModelProto) -> onnx.ModelProto:
    fused = PassManager([FuseConvBatchNorm()]).run(Model.from_proto(fp32)).model.to_proto()
    fused.ir_version = fp32.ir_version
    return fused


def quantize(fp32: onnx.ModelProto, profile: TargetProfile, feeds: dict[str, np.ndarray],
             recipe: Recipe | None = None) -> tuple[onnx.ModelProto, QuantPlan]:
    """FP32 model (BatchNorm already fused) → (canonical QDQ model, plan) for ``profile``, calibrated by
    min/max on ``feeds``."""
    recipe = recipe or Recipe()
    fp32, model, placement = placed(fp32, profile, recipe)
    ranges = minmax_ranges(fp32, placement.activations, feeds)
    plan = finalize(model, placement, ranges, profile, recipe)
    qdq = PassManager([InsertQDQ(plan)]).run(model).model.to_proto()
    qdq.ir_version = 8
    onnx.checker.check_model(qdq)
    return qdq, plan


def make_model(nodes: list[onnx.NodeProto], inputs: dict[str, list[int | str]],
               outputs: dict[str, list[int | str]], inits: dict[str, np.ndarray],
               opset: int = 17) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info(k, FLOAT, v) for k, v in inputs.items()],
        [helper.make_tensor_value_info(k, FLOAT, v) for k, v in outputs.items()],
        [numpy_helper.from_array(np.asarray(v), k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return onnx.shape_inference.infer_shapes(model)


def _w(rng: np.random.Generator, *shape: int, scale: float = 0.3) -> np.ndarray:
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def resnet_block(seed: int = 0) -> onnx.ModelProto:
    """Strided stem conv → residual block (conv-relu-conv + skip, relu) → maxpool → GAP → Reshape → Gemm."""
    rng = np.random.default_rng(seed)
    inits = {"stem_w": _w(rng, 16, 3, 3, 3), "stem_b": _w(rng, 16, scale=0.1),
             "c1_w": _w(rng, 16, 16, 3, 3, scale=0.1), "c1_b": _w(rng, 16, scale=0.1),
             "c2_w": _w(rng, 16, 16, 3, 3, scale=0.1), "c2_b": _w(rng, 16, scale=0.1),
             "shape": np.array([0, -1], np.int64), "fc_w": _w(rng, 10, 16), "fc_b": _w(rng, 10, scale=0.1)}
    nodes = [
        helper.make_node("Conv", ["input", "stem_w", "stem_b"], ["s"], name="stem", strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["s"], ["s_relu"], name="stem_relu"),
        helper.make_node("Conv", ["s_relu", "c1_w", "c1_b"], ["c1"], name="block.conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["c1_relu"], name="block.relu1"),
        helper.make_node("Conv", ["c1_relu", "c2_w", "c2_b"], ["c2"], name="block.conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["c2", "s_relu"], ["sum"], name="block.add"),
        helper.make_node("Relu", ["sum"], ["block_out"], name="block.relu2"),
        helper.make_node("MaxPool", ["block_out"], ["pool"], name="pool", kernel_shape=[3, 3], strides=[2, 2],
                         pads=[1, 1, 1, 1]),
        helper.make_node("GlobalAveragePool", ["pool"], ["gap"], name="gap"),
        helper.make_node("Reshape", ["gap", "shape"], ["flat"], name="reshape"),
        helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    return make_model(nodes, {"input": ["N", 3, 16, 16]}, {"logits": ["N", 10]}, inits)


def mobilenet_block(seed: int = 0) -> onnx.ModelProto:
    """Inverted residual (1x1-ReLU6, depthwise 3x3-ReLU6, 1x1 linear, + input), avg/max pool concat,
    grouped dilated conv, GAP, Flatten, MatMul."""
    rng = np.random.default_rng(seed)
    inits = {"exp_w": _w(rng, 24, 8, 1, 1), "exp_b": _w(rng, 24, scale=0.1),
             "dw_w": _w(rng, 24, 1, 3, 3), "dw_b": _w(rng, 24, scale=0.1),
             "prj_w": _w(rng, 8, 24, 1, 1, scale=0.2), "prj_b": _w(rng, 8, scale=0.1),
             "g_w": _w(rng, 16, 4, 3, 3, scale=0.2), "g_b": _w(rng, 16, scale=0.1),
             "zero": np.array(0.0, np.float32), "six": np.array(6.0, np.float32),
             "head_w": _w(rng, 16, 5)}
    nodes = [
        helper.make_node("Conv", ["input", "exp_w", "exp_b"], ["e"], name="expand"),
        helper.make_node("Clip", ["e", "zero", "six"], ["e6"], name="expand_relu6"),
        helper.make_node("Conv", ["e6", "dw_w", "dw_b"], ["d"], name="depthwise", group=24,
                         pads=[1, 1, 1, 1]),
        helper.make_node("Clip", ["d", "zero", "six"], ["d6"], name="depthwise_relu6"),
        helper.make_node("Conv", ["d6", "prj_w", "prj_b"], ["p"], name="project"),
        helper.make_node("Add", ["p", "input"], ["res"], name="residual"),
        helper.make_node("AveragePool", ["res"], ["avg"], name="avgpool", kernel_shape=[2, 2],
                         strides=[2, 2]),
        helper.make_node("MaxPool", ["res"], ["max"], name="maxpool", kernel_shape=[2, 2], strides=[2, 2]),
        helper.make_node("Concat", ["avg", "max"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "g_w", "g_b"], ["g"], name="grouped", group=4, pads=[2, 2, 2, 2],
                         dilations=[2, 2]),
        helper.make_node("Relu", ["g"], ["g_relu"], name="grouped_relu"),
        helper.make_node("GlobalAveragePool", ["g_relu"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("MatMul", ["flat", "head_w"], ["out"], name="head"),
    ]
    return make_model(nodes, {"input": ["N", 8, 14, 14]}, {"out": ["N", 5]}, inits)


def random_feeds(model: onnx.ModelProto, n: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for value in model.graph.input:
        dims = [d.dim_value or n for d in value.type.tensor_type.shape.dim]
        feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
    return feeds


@dataclass(frozen=True)
class Case:
    """A model ready for lowering: fused FP32, its QDQ form and plan, held-out float inputs."""

    name: str
    fp32: onnx.ModelProto
    qdq: onnx.ModelProto
    plan: QuantPlan
    eval_feeds: dict[str, np.ndarray]
    labels: np.ndarray | None = None


@cache
def case(name: str, pow2: bool = False, n_eval: int = 64) -> Case:
    """``mnist`` (the demo CNN, real digits), ``resnet`` or ``mobilenet`` (random weights and inputs)."""
    from dsqc.backends.hls import HLS_POW2_PROFILE, HLS_PROFILE

    profile = HLS_POW2_PROFILE if pow2 else HLS_PROFILE
    labels = None
    if name == "mnist":
        from dsqc.models.mnist import DEMO_MODEL_PATH, load_mnist

        fp32 = fuse_bn(onnx.load(DEMO_MODEL_PATH))
        calib = {"input": load_mnist("train")[0][:256]}
        x, y = load_mnist("test")
        feeds, labels = {"input": x[:n_eval]}, y[:n_eval]
    else:
        fp32 = fuse_bn({"resnet": resnet_block, "mobilenet": mobilenet_block}[name]())
        calib, feeds = random_feeds(fp32, 64, seed=1), random_feeds(fp32, n_eval, seed=2)
    qdq, plan = quantize(fp32, profile, calib)
    return Case(name, fp32, qdq, plan, feeds, labels)
