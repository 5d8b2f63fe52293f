"""``tflite`` runs ``MatMul(x, W) → Add(·, b)`` as one FULLY_CONNECTED with its bias, so the planner puts
the output Q after the bias Add, not between the two: a Q between described a kernel LiteRT does not
have, and the lowering, finding no Q on the sum, ran the FC in float while ORT's reference of the QDQ
model rounded the MatMul's output (MiniLM: 18 of 36 FCs float, the QDQ model 6 dB, the file 16.5 dB)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.autoprec.plan_space import build_space, setting_for
from dsqc.backends.onnx.profile import ONNX_PROFILE
from dsqc.backends.tflite.profile import TFLITE_PROFILE
from dsqc.calibration.data import SampleSet
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.ir import Model
from dsqc.quant.planner import place
from dsqc.quant.recipe import Recipe, parse_recipe
from dsqc.quant.spec import Precision


def ffn() -> onnx.ModelProto:
    """x → fc1 (MatMul + bias) → Relu → fc2 (MatMul + bias) → + x → y: a transformer FFN whose output
    feeds a float residual Add (as before a LayerNorm), so no int8 node reads fc2's sum."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.25, (16, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(0, 0.5, 32).astype(np.float32), "b1"),
             numpy_helper.from_array(rng.normal(0, 0.2, (32, 16)).astype(np.float32), "w2"),
             numpy_helper.from_array(rng.normal(0, 0.5, 16).astype(np.float32), "b2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["m1"], "mm1"),
             helper.make_node("Add", ["m1", "b1"], ["s1"], "bias1"),
             helper.make_node("Relu", ["s1"], ["r1"], "relu"),
             helper.make_node("MatMul", ["r1", "w2"], ["m2"], "mm2"),
             helper.make_node("Add", ["b2", "m2"], ["s2"], "bias2"),
             helper.make_node("Add", ["s2", "x"], ["y"], "residual")]
    x, y = (helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 8, 16]) for name in ("x", "y"))
    graph = helper.make_graph(nodes, "ffn", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _samples(count: int = 32) -> SampleSet:
    return SampleSet({"x": np.random.default_rng(1).normal(size=(count, 8, 16)).astype(np.float32)}, "n")


def test_the_output_q_goes_after_the_bias_add_on_tflite_only() -> None:
    placement = place(Model.from_proto(ffn()), TFLITE_PROFILE, Recipe())
    assert placement.fused_biases == {"bias1": "mm1", "bias2": "mm2"}
    for add, matmul in placement.fused_biases.items():
        assert placement.decisions[add].precision is Precision.INT8
        assert f"bias of {matmul}" in placement.decisions[add].reason
    assert placement.folded == {"relu": "bias1"}  # FULLY_CONNECTED + bias + fused RELU
    assert {"r1", "s2"} <= set(placement.activations)
    assert not {"m1", "m2", "s1"} & set(placement.activations)
    assert placement.decisions["residual"].precision is Precision.FP32

    ort_placement = place(Model.from_proto(ffn()), ONNX_PROFILE, Recipe())
    assert not ort_placement.fused_biases and ort_placement.decisions["bias2"].precision is Precision.FP32


def test_a_recipe_pinning_the_bias_add_is_obeyed() -> None:
    pinned = parse_recipe({"override": [{"nodes": "bias2", "precision": "fp32"}]})
    placement = place(Model.from_proto(ffn()), TFLITE_PROFILE, pinned)
    assert placement.fused_biases == {"bias1": "mm1"}
    assert "m2" in placement.activations and "s2" not in placement.activations


def test_the_bias_add_follows_its_matmul_in_searched_plans() -> None:
    space = build_space(ffn(), TFLITE_PROFILE, Recipe(method="minmax"), _samples(), int4=False)
    assert set(space.choices) == {"mm1", "mm2"}  # each bias Add (and the folded Relu) follows
    assert space.owners["s2"] == frozenset({"mm2"})
    float_fc2 = {"mm1": Precision.INT8, "mm2": Precision.FP32}
    for plan in (space.planned(float_fc2), space.restrict({"mm1": setting_for(Precision.INT8, True)})):
        assert plan.precision_of("bias2") is Precision.FP32 and "s2" not in plan.tensors
        assert plan.precision_of("bias1") is Precision.INT8 and "r1" in plan.tensors


def test_every_fc_runs_int8_in_litert_and_the_qdq_model_describes_the_file(tmp_path: Path) -> None:
    path = tmp_path / "ffn.onnx"
    onnx.save(ffn(), path)
    np.savez(tmp_path / "calib.npz", x=_samples(64).feeds["x"])
    result = build(BuildRequest(model=path, target="tflite", out_dir=tmp_path / "o",
                                calib=str(tmp_path / "calib.npz"), measure_latency=False,
                                backend_options={"latency": False}))
    tfl = result.metrics["tflite"]
    assert not {"mm1", "mm2"} & set(tfl["int8"]["float_nodes"])
    assert tfl["verification"]["tensors"]["vs_ort_qdq"]["max_lsb"] <= 1
    ort_db, litert_db = result.metrics["verification"]["min_sqnr_db"], tfl["verification"]["min_sqnr_db"]
    assert abs(ort_db - litert_db) < 0.5, (ort_db, litert_db)
