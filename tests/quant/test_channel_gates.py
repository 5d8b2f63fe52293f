"""Squeeze-excitation gates stay float: the per-image channel vector between a global pool and the Mul
that scales the feature map by it (EfficientNet, MobileNetV3), its Convs' weights stored FP16 where the
target stores FP16 weights. The gated Mul, the squeeze pool (its output on the map's scale) and a
classifier head on a pooled vector stay int8, and an integer-only target (hls) keeps the gate int8."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.ir import Model
from dsqc.quant.planner import place
from dsqc.quant.recipe import Recipe, parse_recipe
from dsqc.quant.spec import Precision

GATE = ["fc1", "silu_sigmoid", "silu", "fc2", "gate"]


def squeeze_excitation(path: Path) -> Path:
    """x → Conv → [GAP → fc1 → SiLU → fc2 → Sigmoid] → Mul → GAP → Flatten → Gemm → y."""
    rng = np.random.default_rng(0)
    w = {"w0": (8, 3, 3, 3), "w1": (2, 8, 1, 1), "w2": (8, 2, 1, 1), "wh": (8, 4)}
    inits = [numpy_helper.from_array(rng.normal(0, 0.5, s).astype(np.float32), k) for k, s in w.items()]
    inits += [numpy_helper.from_array(rng.normal(0, 0.1, s).astype(np.float32), k)
              for k, s in {"b1": (2,), "b2": (8,), "bh": (4,)}.items()]
    nodes = [helper.make_node("Conv", ["x", "w0"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("GlobalAveragePool", ["c"], ["p"], name="squeeze"),
             helper.make_node("Conv", ["p", "w1", "b1"], ["e1"], name="fc1"),
             helper.make_node("Sigmoid", ["e1"], ["s1"], name="silu_sigmoid"),
             helper.make_node("Mul", ["e1", "s1"], ["a1"], name="silu"),
             helper.make_node("Conv", ["a1", "w2", "b2"], ["e2"], name="fc2"),
             helper.make_node("Sigmoid", ["e2"], ["g"], name="gate"),
             helper.make_node("Mul", ["c", "g"], ["scaled"], name="excite"),
             helper.make_node("GlobalAveragePool", ["scaled"], ["p2"], name="pool"),
             helper.make_node("Flatten", ["p2"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "wh", "bh"], ["y"], name="head")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    graph = helper.make_graph(nodes, "se", [x], [y], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def test_gate_is_float_scaling_and_head_stay_int8(tmp_path: Path) -> None:
    model = squeeze_excitation(tmp_path / "se.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).normal(size=(32, 3, 8, 8)).astype(np.float32))
    result = build(BuildRequest(model=model, target="onnx", out_dir=tmp_path / "out",
                                calib=str(tmp_path / "calib.npz"), measure_latency=False))
    assert result.plan is not None
    nodes = result.plan.nodes
    for name in GATE:  # the Convs store FP16 weights (onnx stores them), the rest is plain float
        want = Precision.FP16 if name.startswith("fc") else Precision.FP32
        assert nodes[name].precision is want, name
    assert "squeeze-excitation gate after squeeze" in nodes["fc1"].reason
    assert "weights stored FP16" in nodes["fc2"].reason
    stored = {t.name: t.data_type for t in onnx.load(tmp_path / "out" / "se.int8.onnx").graph.initializer}
    assert stored.get("w1_fp16") == TensorProto.FLOAT16 and "w1" not in stored
    for name in ("conv", "squeeze", "excite", "pool", "head"):
        assert nodes[name].precision is Precision.INT8, name
    tensors = result.plan.tensors  # the squeeze pool's output shares the map's scale: it cannot clip
    assert tensors["p"].same_as(tensors["c"])


def test_recipe_and_integer_only_targets_keep_the_gate_int8(tmp_path: Path) -> None:
    from dsqc.backends.onnx.profile import ONNX_PROFILE

    proto = onnx.shape_inference.infer_shapes(onnx.load(squeeze_excitation(tmp_path / "se.onnx")))
    from dsqc.backends.hls.profile import HLS_PROFILE

    integer_only = place(Model.from_proto(proto), HLS_PROFILE, Recipe())
    assert all(integer_only.decisions[n].precision is Precision.INT8 for n in ("fc1", "fc2", "silu"))
    asked = parse_recipe({"override": [{"nodes": "fc1", "precision": "int8"}]})
    kept = place(Model.from_proto(proto), ONNX_PROFILE, asked)
    assert kept.decisions["fc1"].precision is Precision.INT8
    whole = parse_recipe({"override": [{"nodes": "|".join(GATE), "precision": "int8"}]})
    int8_gate = place(Model.from_proto(proto), ONNX_PROFILE, whole)  # the pool keeps its own range
    assert "squeeze" not in int8_gate.squeeze_pools
    assert int8_gate.group_of("p") != int8_gate.group_of("c")
    assert kept.decisions["fc2"].precision is Precision.FP16
    trt_like = dataclasses.replace(ONNX_PROFILE, fp16_weights=False)
    assert place(Model.from_proto(proto), trt_like, Recipe()).decisions["fc2"].precision is Precision.FP32
