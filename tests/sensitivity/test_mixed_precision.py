"""``dsqc build --accuracy-budget [--size-budget]``: automatic mixed precision, written as a recipe."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, numpy_helper

from dsqc.autoprec.plan_space import weight_bytes
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.cli import main
from dsqc.driver.pipeline import build
from dsqc.errors import RecipeError
from dsqc.quant.spec import Precision
from dsqc.verify import run_batches, session
from tests.sensitivity._models import OUTLIER_NODE, save_cnn, save_embedding

AVX2 = {"isa": "avx2"}  # the same weight grid on any build machine


def _no_bias_correction(folder: Path) -> Path:
    """Bias correction (on by default) cancels most of the planted outlier's damage (28.6 → 43.9 dB),
    and so do 8-bit weights: these tests are about the search, so they keep the outlier harmful
    (7-bit weights, which the planted outlier is sized for, and no bias correction)."""
    path = folder / "no_bc.toml"
    path.write_text("[quantization]\nweight_limit = 64\n\n[boosters]\nbias_correction = false\n")
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_cnn(tmp_path_factory.mktemp("cnn"))


@pytest.fixture(scope="module")
def auto_build(cnn: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    model, data = cnn
    out = tmp_path_factory.mktemp("auto") / "out"
    result = build(BuildRequest(model=model, target="onnx", out_dir=out, calib=str(data),
                                recipe=_no_bias_correction(out.parent),
                                measure_latency=False, accuracy_budget="sqnr:35",
                                backend_options=AVX2))
    assert result.failed is None
    return out, json.loads((out / "report.json").read_text())


def test_meets_an_sqnr_budget_plain_int8_misses(cnn: tuple[Path, Path], auto_build: tuple[Path, dict],
                                                tmp_path: Path) -> None:
    model, data = cnn
    plain = build(BuildRequest(model=model, target="onnx", out_dir=tmp_path / "int8", calib=str(data),
                               recipe=_no_bias_correction(tmp_path), measure_latency=False,
                               backend_options=AVX2))
    assert plain.metrics["verification"]["min_sqnr_db"] < 33
    out, report = auto_build
    mp = report["metrics"]["mixed_precision"]
    assert mp["met"] and mp["accuracy"]["achieved"] >= 35
    assert report["metrics"]["verification"]["min_sqnr_db"] == pytest.approx(mp["accuracy"]["achieved"])
    assert mp["accuracy"]["plain_int8_reference_semantics"] < 33
    above = [n for n, d in mp["nodes"].items() if d["precision"] in ("fp16", "fp32")]
    assert above == [OUTLIER_NODE], mp["nodes"]
    assert "promoted from int8" in mp["nodes"][OUTLIER_NODE]["reason"]
    assert all(d["reason"] for d in mp["nodes"].values())
    assert report["plan"]["nodes"][OUTLIER_NODE]["reason"] == mp["nodes"][OUTLIER_NODE]["reason"]
    for name in ("plan.recipe.toml", "sensitivity.json", "sensitivity.png", "report.json"):
        assert (out / name).is_file(), name
        assert name in report["artifacts"]
    assert mp["sensitivity"]["top"][0]["node"] == OUTLIER_NODE


def test_fp16_node_stores_half_the_bytes_and_stays_float(auto_build: tuple[Path, dict]) -> None:
    out, report = auto_build
    qdq = onnx.load(out / "outlier_cnn.int8.onnx")
    inits = {t.name: t for t in qdq.graph.initializer}
    assert inits["w2_fp16"].data_type == TensorProto.FLOAT16 and "w2" not in inits
    conv2 = next(n for n in qdq.graph.node if n.name == OUTLIER_NODE)
    dq = next(n for n in qdq.graph.node if n.output[0] == conv2.input[0])
    assert dq.op_type == "DequantizeLinear" and any(a.name == "axis" for a in dq.attribute), \
        "a per-tensor DQ would make ORT quantize the float conv's weights (WeightBiasQuantization)"
    feeds = [{"input": np.random.default_rng(5).normal(0, 1, (4, 3, 16, 16)).astype(np.float32)}]
    fused = run_batches(session(qdq), feeds)["logits"]
    reference = run_batches(session(qdq, optimize=False), feeds)["logits"]
    np.testing.assert_allclose(fused, reference, atol=0.05)
    assert report["metrics"]["mixed_precision"]["size"]["bytes"] == weight_bytes(qdq)


def test_recipe_round_trip_reproduces_the_plan(cnn: tuple[Path, Path], auto_build: tuple[Path, dict],
                                               tmp_path: Path) -> None:
    model, data = cnn
    out, report = auto_build
    again = tmp_path / "again"
    assert main(["build", str(model), "-t", "onnx", "-o", str(again), "--calib", str(data), "--no-latency",
                 "--recipe", str(out / "plan.recipe.toml"), "-B", "isa=avx2"]) == 0
    second = json.loads((again / "report.json").read_text())
    precisions = {n: d["precision"] for n, d in report["plan"]["nodes"].items()}
    assert {n: d["precision"] for n, d in second["plan"]["nodes"].items()} == precisions
    assert second["plan"]["tensors"] == report["plan"]["tensors"]
    assert (again / "outlier_cnn.int8.onnx").read_bytes() == (out / "outlier_cnn.int8.onnx").read_bytes()


def test_missed_budget_keeps_the_best_plan_and_exits_2(cnn: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model, data = cnn
    out = tmp_path / "missed"
    code = main(["build", str(model), "-t", "onnx", "-o", str(out), "--calib", str(data), "--no-latency",
                 "--accuracy-budget", "sqnr:80", "--size-budget", "0.3"])
    captured = capsys.readouterr()
    assert code == 2
    assert "missed the accuracy budget sqnr:80" in captured.err
    assert "MISSED" in captured.out
    report = json.loads((out / "report.json").read_text())
    mp = report["metrics"]["mixed_precision"]
    assert not mp["met"] and not mp["accuracy"]["met"] and mp["size"]["met"]
    assert report["failed"]
    assert (out / "plan.recipe.toml").is_file() and (out / "outlier_cnn.int8.onnx").is_file()
    assert mp["size"]["fraction"] <= 0.3


def test_budget_met_only_in_float_exits_2(cnn: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    """No int8 plan reaches 200 dB: the search ends with every node float, which "meets" the budget
    while quantizing nothing. That is not what an int8 build was asked for: exit 2, plan still written."""
    model, data = cnn
    out = tmp_path / "all_float"
    code = main(["build", str(model), "-t", "onnx", "-o", str(out), "--calib", str(data), "--no-latency",
                 "--accuracy-budget", "sqnr:200"])
    captured = capsys.readouterr()
    assert code == 2
    assert "only by keeping every node float" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["mixed_precision"]["accuracy"]["met"] and report["failed"]
    assert not report["plan"]["tensors"]
    assert (out / "plan.recipe.toml").is_file()


def test_size_budget_uses_int4_weights_and_embedding_tables(tmp_path: Path) -> None:
    model, data = save_embedding(tmp_path)
    out = tmp_path / "small"
    result = build(BuildRequest(model=model, target="onnx", out_dir=out, calib=str(data),
                                measure_latency=False, accuracy_budget="sqnr:20", size_budget=0.25))
    mp = result.metrics["mixed_precision"]
    assert result.failed is None, result.failed
    assert mp["size"]["fraction"] <= 0.25 and mp["accuracy"]["achieved"] >= 20
    assert mp["accuracy"]["achieved"] < mp["accuracy"]["plain_int8_reference_semantics"], "a genuine trade"
    assert {d["precision"] for d in mp["nodes"].values()} == {"int4", "int8"}
    assert mp["nodes"]["embed"]["precision"] == "int4", "the table holds half the bytes: int4 first"
    qdq = onnx.load(out / "embedding_mlp.int8.onnx")
    int4 = [t for t in qdq.graph.initializer if t.data_type == TensorProto.INT4]
    assert int4, "int4 weights stored packed"
    assert weight_bytes(qdq) == mp["size"]["bytes"]
    assert numpy_helper.to_array(int4[0]).dtype.itemsize == 1


@pytest.mark.parametrize(("args", "message"), [
    (["--size-budget", "0.2"], "needs --accuracy-budget"),
    (["--accuracy-budget", "psnr:3"], "expected sqnr:DB"),
    (["--accuracy-budget", "sqnr:x"], "expected sqnr:DB"),
    (["--accuracy-budget", "sqnr:30", "--size-budget", "1.5"], "fraction"),
    (["--accuracy-budget", "sqnr:30", "--precision", "fp32"], "int8"),
])
def test_budget_flags_are_checked_before_any_work(cnn: tuple[Path, Path], tmp_path: Path, args: list[str],
                                                  message: str, capsys: pytest.CaptureFixture[str]) -> None:
    model, data = cnn
    code = main(["build", str(model), "-t", "onnx", "-o", str(tmp_path / "x"), "--calib", str(data), *args])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


def test_drop_budget_needs_labels(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    with pytest.raises(RecipeError, match="labels"):
        build(BuildRequest(model=model, target="onnx", out_dir=tmp_path / "x", calib=str(data),
                           measure_latency=False, accuracy_budget="drop:0.01"))


def test_a_float_conv_next_to_int8_stays_float_in_onnx_runtime(cnn: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    """ORT's WeightBiasQuantization would quantize an fp32 conv fed by a per-tensor DQ to per-tensor int8;
    dsqc writes that DQ per-axis, so ORT's fused run equals the planned (reference) semantics."""
    model, data = cnn
    recipe = tmp_path / "keep.toml"
    recipe.write_text(f'[[override]]\nnodes = "{OUTLIER_NODE}"\nprecision = "fp32"\n')
    out = tmp_path / "keep"
    build(BuildRequest(model=model, target="onnx", out_dir=out, calib=str(data), recipe=recipe,
                       measure_latency=False))
    qdq = onnx.load(out / "outlier_cnn.int8.onnx")
    feeds = [{"input": np.random.default_rng(6).normal(0, 1, (8, 3, 16, 16)).astype(np.float32)}]
    fused = run_batches(session(qdq), feeds)["logits"]
    reference = run_batches(session(qdq, optimize=False), feeds)["logits"]
    np.testing.assert_allclose(fused, reference, atol=0.05)
    report = json.loads((out / "report.json").read_text())
    assert any("per-axis" in note for note in report["plan"]["notes"])


@pytest.mark.parametrize("precision", ["int8", "int4"])
def test_quantized_tables_gather_only_their_rows(tmp_path: Path, precision: str) -> None:
    """A weight-only embedding table runs as GatherBlockQuantized (named as the Gather) and computes what
    DequantizeLinear → Gather computes."""
    from dsqc.quant.qparams import dequantize, quantize, weight_spec
    from tests.sensitivity._models import embedding_mlp

    model, data = save_embedding(tmp_path)
    recipe = tmp_path / "table.toml"
    recipe.write_text(f'[[override]]\nnodes = "embed"\nprecision = "{precision}"\n'
                      '[[override]]\nnodes = "proj.*"\nprecision = "fp32"\n')
    out = tmp_path / "table"
    build(BuildRequest(model=model, target="onnx", out_dir=out, calib=str(data), recipe=recipe,
                       measure_latency=False))
    qdq = onnx.load(out / "embedding_mlp.int8.onnx")
    lookup = [n for n in qdq.graph.node if n.op_type == "GatherBlockQuantized"]
    assert [n.name for n in lookup] == ["embed"] and "Gather" not in [n.op_type for n in qdq.graph.node]
    fp32 = embedding_mlp()
    inits = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    table = inits["table"]
    spec = weight_spec(table, 1, "int4", 32) if precision == "int4" else weight_spec(table, 0, "int8")
    ids = np.random.default_rng(9).integers(0, 64, (3, 8))
    hidden = np.maximum(dequantize(quantize(table, spec), spec)[ids] @ inits["w1"], 0)
    got = run_batches(session(qdq), [{"ids": ids}])["out"]
    np.testing.assert_allclose(got, hidden @ inits["w2"], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("target", ["onnx", "trt"])
def test_tables_are_int8_by_default_where_the_runtime_gathers_int8_rows(tmp_path: Path, target: str) -> None:
    """onnx: the embedding is int8 per row without a recipe (GatherBlockQuantized); trt: stays float."""
    model, data = save_embedding(tmp_path)
    out = tmp_path / target
    result = build(BuildRequest(model=model, target=target, out_dir=out, calib=str(data),
                                measure_latency=False))
    decision = result.plan.nodes["embed"]
    written = next(p for p in out.iterdir() if p.name.endswith(".onnx") and ".fp32." not in p.name)
    ops = [n.op_type for n in onnx.load(written).graph.node]
    if target == "onnx":
        assert decision.precision is Precision.INT8 and "table lookup" in decision.reason
        assert "GatherBlockQuantized" in ops and "Gather" not in ops
        fp32_bytes, int8_bytes = result.metrics["verification"]["size_bytes"].values()
        assert int8_bytes < 0.5 * fp32_bytes  # the 64x32 table dominates the model
    else:
        assert decision.precision is Precision.FP32 and "Gather" in ops


def test_nodes_the_users_recipe_fixes_stay_fixed(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    recipe = tmp_path / "user.toml"
    recipe.write_text('[quantization]\nmethod = "minmax"\n\n[exclude]\nnodes = ["conv1"]\n')
    out = tmp_path / "fixed"
    result = build(BuildRequest(model=model, target="onnx", out_dir=out, calib=str(data), recipe=recipe,
                                measure_latency=False, accuracy_budget="sqnr:35",
                                backend_options=AVX2))
    mp = result.metrics["mixed_precision"]
    assert "conv1" not in mp["nodes"] and result.plan is not None
    assert result.plan.nodes["conv1"].precision.value == "fp32"
    written = (out / "plan.recipe.toml").read_text()
    assert 'method = "minmax"' in written and 'nodes = ["conv1"]' in written


def test_rounds_verify_the_bias_corrected_model_the_build_writes(cnn: tuple[Path, Path],
                                                                 tmp_path: Path) -> None:
    """With bias correction on (the default), a round's measurement is the written model's (the plan the
    search kept verifies in the build exactly as it did in its round), and so is the search's prediction."""
    model, data = cnn
    out = tmp_path / "out"
    build(BuildRequest(model=model, target="onnx", out_dir=out, calib=str(data), measure_latency=False,
                       accuracy_budget="sqnr:48", backend_options=AVX2))
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    assert metrics["boosters"]["bias_correction"]
    mp = metrics["mixed_precision"]
    final = metrics["verification"]["min_sqnr_db"]
    assert mp["accuracy"]["achieved"] == pytest.approx(final)
    assert any(r["achieved"] == pytest.approx(final, abs=1e-6) for r in mp["search"]["rounds"]), \
        (final, mp["search"]["rounds"])
    # the search evaluates plans bias-corrected too: its plain INT8 is what a plain build verifies
    plain = build(BuildRequest(model=model, target="onnx", out_dir=tmp_path / "int8", calib=str(data),
                               measure_latency=False, backend_options=AVX2))
    assert mp["accuracy"]["plain_int8_reference_semantics"] == pytest.approx(
        plain.metrics["verification"]["min_sqnr_db"], abs=0.5)
    for r in mp["search"]["rounds"]:
        assert r["predicted_or_measured_reference"] == pytest.approx(r["achieved"], abs=0.05), r
