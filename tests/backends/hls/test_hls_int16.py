"""``-B activation_bits=16``: int16 activations, int8 weights on the hls target. The plan keeps a
Sigmoid/Tanh table's input int8 (256 codes); every other activation is int16. gcc's csim stays bit-exact
with the integer reference, each op alone within 1 LSB of ORT running the opset-21 QDQ model, and the
output moves less from FP32 than the int8 build's (one long conv: 50 vs 39 dB, its int8 weights then the
limit)."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from _integer_models import make_model, quantize, random_feeds
from onnx import helper
from test_hls_pipeline import squeeze_excitation_model

from dsqc.backends.hls.profile import hls_profile
from dsqc.backends.onnx.profile import ONNX_PROFILE
from dsqc.debug.command import DebugRequest, debug
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.pipeline import build
from dsqc.driver.report import format_result
from dsqc.driver.stages import advice_hint
from dsqc.errors import RecipeError, UnsupportedError
from dsqc.integer import lower
from dsqc.integer.ops import ConvOp
from dsqc.quant.recipe import load_recipe

needs_gcc = pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")),
                               reason="gcc/make/nm missing")


def _build(model: Path, calib: Path, out: Path, bits: int) -> BuildResult:
    return build(BuildRequest(model=model, target="hls", out_dir=out, calib=str(calib),
                              measure_latency=False, repair=False,
                              backend_options={"tb_vectors": 8, "activation_bits": bits}))


def _sqnr(result: BuildResult) -> float:
    return float(result.metrics["verification"]["outputs"]["y"]["sqnr_db"])


def _int16_and_int8(model: Path, shape: tuple[int, ...], tmp_path: Path) -> tuple[BuildResult, BuildResult]:
    """The model built with int16 and with int8 activations on the same random calibration data; the
    int16 build checked bit-exact in csim and within 1 LSB of ORT op by op."""
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).normal(size=shape).astype(np.float32))
    wide, narrow = _build(model, calib, tmp_path / "a16", 16), _build(model, calib, tmp_path / "a8", 8)
    hls = wide.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["vectors"] >= 6
    assert hls["lsb_vs_ort"]["per_op_float_requant"]["max_lsb"] <= 1
    return wide, narrow


@needs_gcc
def test_int16_activations_are_bit_exact_and_closer_to_fp32(tmp_path: Path) -> None:
    wide, narrow = _int16_and_int8(squeeze_excitation_model(tmp_path / "se.onnx"), (48, 4, 8, 8), tmp_path)
    assert wide.plan is not None
    dtypes = {name: spec.dtype for name, spec in wide.plan.tensors.items() if spec.dtype != "int32"}
    assert {n for n in ("c1", "e", "scaled") if dtypes[n] == "int8"} == {"c1", "e", "scaled"}  # tables read
    assert {dtypes[n] for n in ("x", "s1", "a1", "g", "rr", "gate", "t", "y")} == {"int16"}
    source = (tmp_path / "a16" / "hls" / "firmware" / "se.c").read_text()
    assert source.count("_table[x[i] + 128]") == 3
    assert "void se(const int16_t in_x[256], int16_t out_y[192])" in source
    assert "static int16_t dsqc_requant16(" in source
    weights = (tmp_path / "a16" / "hls" / "firmware" / "weights.h").read_text()
    assert weights.count("extern const int16_t layer") == 3  # the three tables write int16 codes
    assert _sqnr(wide) > _sqnr(narrow) + 1, (_sqnr(wide), _sqnr(narrow))  # three tables still read int8
    readme = (tmp_path / "a16" / "hls" / "README.md").read_text()
    assert "int16 activations" in readme and "| `in_x` | in | `int16_t` | 1x4x8x8 | 512 |" in readme


def _wide_conv(path: Path) -> Path:
    """A 3x3 conv over 128 channels with weights near their per-channel maximum: Σ|w|·32767 passes int32,
    so the accumulator is int64 and the multiplier has fewer bits."""
    rng = np.random.default_rng(3)
    w = (rng.uniform(0.5, 1.0, (8, 128, 3, 3)) * rng.choice([-1, 1], (8, 128, 3, 3))).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="wide", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    model = make_model(nodes, {"x": ["N", 128, 6, 6]}, {"y": ["N", 8, 6, 6]},
                       {"w": w, "b": rng.normal(0, 0.1, 8).astype(np.float32)})
    onnx.save(model, path)
    return path


@needs_gcc
def test_a_long_int16_reduction_accumulates_in_int64(tmp_path: Path) -> None:
    result, narrow = _int16_and_int8(_wide_conv(tmp_path / "wide.onnx"), (32, 128, 6, 6), tmp_path)
    source = (tmp_path / "a16" / "hls" / "firmware" / "wide.c").read_text()
    assert "int64_t acc = " in source and "int32_t acc = " not in source
    assert _sqnr(result) > _sqnr(narrow) + 8, (_sqnr(result), _sqnr(narrow))


def test_a_table_reading_an_int16_tensor_is_refused_by_name() -> None:
    """A plan that made a Sigmoid's input int16 (a profile without ``eight_bit_inputs``): the integer
    program names the node instead of building a 65536-entry table."""
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Sigmoid", ["r"], ["y"], name="gate")]
    fp32 = make_model(nodes, {"x": ["N", 4]}, {"y": ["N", 4]}, {}, opset=21)
    profile = hls_profile(16)
    qdq, _ = quantize(fp32, profile, random_feeds(fp32, 8))
    lower(qdq)  # the profile keeps the table's input int8: lowers
    unguarded = type(profile)(**{**profile.__dict__, "eight_bit_inputs": frozenset()})
    qdq, _ = quantize(fp32, unguarded, random_feeds(fp32, 8))
    with pytest.raises(UnsupportedError, match=r"node 'gate' \(Sigmoid\): input .* is int16; the Sigmoid "
                                               r"table takes int8 inputs"):
        lower(qdq)


def test_int8_builds_keep_int32_accumulators() -> None:
    from _integer_models import case

    program = lower(case("resnet").qdq)
    assert not any(op.acc64 for op in program.ops if isinstance(op, ConvOp))


def _outlier_channel(path: Path, opset: int = 17) -> Path:
    """One channel 500× louder than the three the next conv reads: one int8 scale for the whole tensor
    leaves those three a few codes (the int8 build collapses); int16 gives them 256× more."""
    eye = np.eye(4, dtype=np.float32)
    eye[0, 0] = 500.0
    pick = np.zeros((2, 4, 1, 1), np.float32)
    pick[:, 1:, 0, 0] = [[1.0, -0.5, 0.25], [0.3, 0.8, -1.0]]
    nodes = [helper.make_node("Conv", ["x", "eye"], ["mid"], name="mix"),
             helper.make_node("Conv", ["mid", "pick"], ["y"], name="pick")]
    onnx.save(make_model(nodes, {"x": ["N", 4, 6, 6]}, {"y": ["N", 2, 6, 6]},
                         {"eye": eye.reshape(4, 4, 1, 1), "pick": pick}, opset=opset), path)
    return path


@needs_gcc
def test_repair_of_a_degraded_int8_build_lifts_nodes_to_int16(tmp_path: Path) -> None:
    """hls has no float layers for a mixed plan: repair's search lifts nodes to int16 activations (int8
    weights) and keeps that plan; ``--no-repair`` keeps int8, whose advice names the budget and
    ``-B activation_bits=16`` (not an fp32 recipe)."""
    model = _outlier_channel(tmp_path / "outlier.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).normal(size=(48, 4, 6, 6)).astype(np.float32))
    request = BuildRequest(model=model, target="hls", out_dir=tmp_path / "out", calib=str(calib),
                           measure_latency=False, backend_options={"tb_vectors": 4})
    repaired = build(request)
    rep = repaired.metrics["repair"]
    assert rep["kept"] == "mixed" and rep["int8"]["achieved"] < 15 <= rep["mixed"]["achieved"]
    assert repaired.verdict is not None and repaired.verdict.level == "ok"
    assert repaired.metrics["hls"]["csim"]["status"] == "bit-exact"
    assert repaired.plan is not None and repaired.plan.tensors["mid"].dtype == "int16"
    assert repaired.plan.histogram().get("int16", 0) >= 1
    assert "int16_t" in (tmp_path / "out" / "hls" / "firmware" / "outlier.c").read_text()
    recipe = (tmp_path / "out" / "plan.recipe.toml").read_text()
    assert 'precision = "int16"' in recipe
    summary = format_result(repaired)
    assert "the mixed plan is the artifact; --no-repair keeps plain int8" in summary
    assert summary.startswith("dsqc: built target 'hls' (int8, 2 tensors int16) in ")
    replay = debug(DebugRequest(model, tmp_path / "out", calib=str(calib), progress=False))
    mid = next(r for r in replay.rows if r.point.tensor == "mid")
    assert mid.point.spec.dtype == "int16"  # replayed with int16 Q/DQ (opset 21), as built
    row = replay.outputs["y"]
    assert abs(row["accumulated_sqnr_db"] - row["build_verification_sqnr_db"]) < 0.5, row

    plain_request = dataclasses.replace(request, out_dir=tmp_path / "plain", repair=False)
    plain = build(plain_request)
    assert "repair" not in plain.metrics and plain.verdict is not None and plain.verdict.level != "ok"
    hint = advice_hint(plain.verdict, plain_request)
    assert "Try: --accuracy-budget sqnr:15 (int16 activations on the nodes that need them" in hint
    assert "-B activation_bits=16 (every activation int16, twice the activation memory)" in hint
    assert "fp32" not in hint
    wide_request = dataclasses.replace(plain_request, backend_options={"activation_bits": 16})
    assert "activation_bits" not in advice_hint(plain.verdict, wide_request)


def test_a_node_asked_int16_makes_its_own_tensors_int16(tmp_path: Path) -> None:
    """``precision = "int16"`` on one node: the tensors it reads and writes are int16, the rest int8; a
    target without int16 kernels refuses the recipe naming the node."""
    fp32 = onnx.load(_outlier_channel(tmp_path / "outlier.onnx", opset=21))
    recipe = tmp_path / "r.toml"
    recipe.write_text('[[override]]\nnodes = "pick"\nprecision = "int16"\n')
    parsed = load_recipe(recipe)
    _, plan = quantize(fp32, hls_profile(), random_feeds(fp32, 8), parsed)
    assert plan.tensors["mid"].dtype == plan.tensors["y"].dtype == "int16"
    assert plan.tensors["x"].dtype == "int8"
    assert plan.nodes["pick"].wide and plan.nodes["pick"].label == "int16" and not plan.nodes["mix"].wide
    with pytest.raises(RecipeError, match=r"node 'pick' \(Conv\): precision int16 \(int16 activations, "
                                          r"int8 weights\) needs int16 integer kernels, which target onnx"):
        quantize(fp32, ONNX_PROFILE, random_feeds(fp32, 8), parsed)


@needs_gcc
def test_int16_with_power_of_two_scales_is_shift_only_and_bit_exact(tmp_path: Path) -> None:
    model = _wide_conv(tmp_path / "wide.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).normal(size=(16, 128, 6, 6)).astype(np.float32))
    result = build(BuildRequest(model=model, target="hls", out_dir=tmp_path / "out", calib=str(calib),
                                measure_latency=False, repair=False,
                                backend_options={"tb_vectors": 4, "activation_bits": 16,
                                                 "power_of_two_scales": True}))
    assert result.metrics["hls"]["csim"]["status"] == "bit-exact"
    assert result.plan is not None and result.plan.tensors["x"].dtype == "int16"
    source = (tmp_path / "out" / "hls" / "firmware" / "wide.c").read_text()
    assert "dsqc_shift16(" in source and "dsqc_requant" not in source


def test_snapping_an_int16_plan_to_powers_of_two_keeps_int16() -> None:
    """A plan made without power-of-two scales (a multi-target build's) snapped for shift-only hardware:
    int16 activations stay int16, in an opset-21 model."""
    from dsqc.backends.hls.pow2 import is_pow2_plan, snap_to_pow2

    def conv(opset: int) -> onnx.ModelProto:
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")]
        weight = np.random.default_rng(0).normal(size=(2, 3, 1, 1)).astype(np.float32)
        return make_model(nodes, {"x": ["N", 3, 4, 4]}, {"y": ["N", 2, 4, 4]}, {"w": weight}, opset=opset)

    _, plan = quantize(conv(21), hls_profile(16), random_feeds(conv(21), 8))
    qdq, snapped = snap_to_pow2(conv(17), plan)  # the build's FP32 model: opset 17
    assert is_pow2_plan(snapped) and snapped.tensors["x"].dtype == snapped.tensors["y"].dtype == "int16"
    program = lower(qdq)
    assert program.tensors[program.outputs[0].tensor].wide and program.tensors[program.inputs[0].tensor].wide
