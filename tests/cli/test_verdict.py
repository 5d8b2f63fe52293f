"""Every build gets a verdict (ok / degraded / collapsed / unquantized) in the terminal and report.json;
``--strict`` turns a verdict other than ok into exit 2 with nothing written (issue 12, items 2 and 9)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.cli import main
from dsqc.driver.verdict import Thresholds, advice, judge
from dsqc.errors import RecipeError
from dsqc.metrics import channel_ranges, cosine, group_metrics, scale_groups
from dsqc.quant.recipe import parse_recipe
from tests.conftest import conv_bn_model


def _out(sqnr: float, cos: float) -> dict[str, float]:
    return {"sqnr_db": sqnr, "cosine": cos}


def test_judge_levels_and_reasons() -> None:
    assert judge({"y": _out(40.0, 0.9999)}, None, 10).level == "ok"
    assert judge({"y": _out(math.inf, 1.0)}, None, 10).level == "ok"  # lossless, and something was quantized
    degraded = judge({"y": _out(12.0, 0.99)}, None, 10)
    assert degraded.level == "degraded" and degraded.reasons == ("output 'y' SQNR 12 dB < 15 dB",)
    # the PP-OCR-style detector of issue 12: -2.29 dB, cosine 0.546 on its probability map
    collapsed = judge({"map": _out(-2.29, 0.546), "aux": _out(40.0, 0.9999)}, None, 10)
    assert collapsed.level == "collapsed"
    assert collapsed.reasons == ("output 'map' SQNR -2.29 dB < 6 dB", "output 'map' cosine 0.546 < 0.9")
    task = {"fp32": 0.97, "quantized": 0.80, "drop": 0.17, "metric": "top1_accuracy"}
    assert judge({"y": _out(30.0, 0.999)}, task, 10).level == "collapsed"
    assert judge({"y": _out(30.0, 0.999)}, {**task, "drop": 0.02}, 10).level == "degraded"
    assert judge({"y": _out(math.nan, math.nan)}, None, 10).level == "collapsed"


def test_the_advice_names_the_budget_of_the_limit_missed() -> None:
    """NudeNet's repaired build met sqnr:15 but its class-score channels missed the cosine line; the
    advice used to repeat ``--accuracy-budget sqnr:15``, which that build had already met."""
    group = {"channels": "4-21", "rms": 0.0058, "sqnr_db": 16.6, "cosine": 0.932}
    verdict = judge({"output0": {**_out(37.8, 0.9999), "groups": [group]}}, None, 10)
    assert verdict.level == "degraded" and verdict.missed == {"cosine"} and verdict.budget() == "cosine:0.98"
    assert "--accuracy-budget cosine:0.98 for an automatic" in advice(verdict, "m.onnx", "d.npz", "out")
    assert judge({"y": _out(12.0, 0.95)}, None, 10).budget() == "sqnr:15"  # SQNR first, as repair takes it
    task = {"fp32": 0.97, "quantized": 0.95, "drop": 0.02, "metric": "top1_accuracy"}
    assert judge({"y": _out(30.0, 0.999)}, task, 10).budget() == "drop:0.01"
    assert judge({"y": _out(40.0, 0.9999)}, None, 10).budget() is None


def test_nothing_quantized_is_never_success() -> None:
    verdict = judge({"y": _out(math.inf, 1.0)}, None, quantized_tensors=0)
    assert verdict.level == "unquantized" and not verdict.ok
    assert "quantized 0 tensors" in verdict.reasons[0]


def test_an_explicit_budget_is_the_ok_line_of_its_kind() -> None:
    """``--accuracy-budget drop:0.05`` met is not ``degraded`` by the default 0.01 drop; a recipe's own
    ``[verdict]`` limit still wins; the collapsed limit moves with a budget past it."""
    task = {"fp32": 1.0, "quantized": 0.96, "drop": 0.04, "metric": "box-agreement"}
    assert judge({"y": _out(40.0, 0.9999)}, task, 1, Thresholds()).level == "degraded"
    limits = Thresholds().with_budget("drop", 0.05, ())
    assert judge({"y": _out(40.0, 0.9999)}, task, 1, limits).level == "ok"
    assert Thresholds().with_budget("drop", 0.05, {"degraded_drop"}) == Thresholds()
    assert Thresholds().with_budget("drop", 0.2, ()).collapsed_drop == 0.2
    sqnr = Thresholds().with_budget("sqnr", 30.0, ())
    assert judge({"y": _out(25.0, 0.999)}, None, 1, sqnr).level == "degraded"
    assert Thresholds().with_budget("sqnr", 4.0, ()).collapsed_sqnr_db == 4.0


def test_thresholds_from_recipe_table() -> None:
    recipe = parse_recipe({"verdict": {"degraded_sqnr_db": 30, "collapsed_cosine": 0.5}}, "r.toml")
    limits = Thresholds.from_table(recipe.verdict, "r.toml")
    assert limits.degraded_sqnr_db == 30 and limits.collapsed_cosine == 0.5 and limits.degraded_cosine == 0.98
    assert judge({"y": _out(25.0, 0.999)}, None, 1, limits).level == "degraded"
    with pytest.raises(RecipeError, match=r"unknown key 'verdict.sqnr'.*degraded_sqnr_db"):
        Thresholds.from_table({"sqnr": 3}, "r.toml")
    with pytest.raises(RecipeError, match="must be a number"):
        Thresholds.from_table({"degraded_cosine": "high"}, "r.toml")
    with pytest.raises(RecipeError, match="must not exceed"):
        Thresholds.from_table({"collapsed_sqnr_db": 20}, "r.toml")


def collapsing_model(path: Path) -> Path:
    """Conv (+1000 bias) → Conv (−1000 bias): the output is the input, but the middle tensor's range
    [0, 1003] leaves ~4 units per int8 step for a signal of ±2 — the outlier-range collapse seen on
    real models."""
    eye = np.eye(4, dtype=np.float32)[:, :, None, None]
    inits = [numpy_helper.from_array(eye, "w"), numpy_helper.from_array(np.full(4, 1000.0, np.float32), "up"),
             numpy_helper.from_array(np.full(4, -1000.0, np.float32), "down")]
    nodes = [helper.make_node("Conv", ["x", "w", "up"], ["h"], name="shift_up"),
             helper.make_node("Conv", ["h", "w", "down"], ["y"], name="shift_down")]
    return _save(path, nodes, inits, 4)


def _save(path: Path, nodes: list[onnx.NodeProto], inits: list[onnx.TensorProto], out_channels: int) -> Path:
    """x[N, 4, 8, 8] → ``nodes`` → y[N, out_channels, 8, 8], saved at ``path``."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", out_channels, 8, 8])
    graph = helper.make_graph(nodes, path.stem, [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _npz(path: Path, name: str, shape: tuple[int, ...], n: int = 40) -> Path:
    np.savez(path, **{name: np.random.default_rng(0).normal(size=(n, *shape)).astype(np.float32)})
    return path


def _build(model: Path, calib: Path, out: Path, *extra: str) -> int:
    return main(["build", str(model), "--target", "onnx", "--calib", str(calib), "--no-latency",
                 "-o", str(out), *extra])


def test_collapsed_build_says_so_and_strict_writes_nothing(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    model = collapsing_model(tmp_path / "collapse.onnx")
    calib = _npz(tmp_path / "calib.npz", "x", (4, 8, 8))
    assert _build(model, calib, tmp_path / "out", "--no-repair") == 0
    out, err = capsys.readouterr()
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"]["level"] == "collapsed"
    assert report["verdict"]["thresholds"]["collapsed_sqnr_db"] == 6.0
    assert "verdict: collapsed — output 'y' SQNR" in out and "limits: degraded below 15 dB" in out
    last = err.strip().splitlines()[-1]
    assert last.startswith("dsqc: warning: verdict COLLAPSED: output 'y' SQNR"), last
    assert f"dsqc analyze {model} --calib {calib}" in last and "--accuracy-budget sqnr:15" in last

    assert _build(model, calib, tmp_path / "strict", "--strict", "--no-repair") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("dsqc: error: --strict, nothing written: verdict COLLAPSED")
    assert not (tmp_path / "strict").exists()


def test_recipe_verdict_table_moves_the_limits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = collapsing_model(tmp_path / "collapse.onnx")
    calib = _npz(tmp_path / "calib.npz", "x", (4, 8, 8))
    recipe = tmp_path / "r.toml"
    recipe.write_text("[verdict]\ncollapsed_sqnr_db = -20\ncollapsed_cosine = 0.1\n"
                      "degraded_sqnr_db = -10\ndegraded_cosine = 0.2\n")
    assert _build(model, calib, tmp_path / "out", "--recipe", str(recipe), "--strict") == 0
    assert "verdict: ok" in capsys.readouterr().out


def test_build_that_quantized_nothing_is_loud(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(), model)
    calib = _npz(tmp_path / "calib.npz", "input", (3, 16, 16))
    recipe = tmp_path / "none.toml"
    recipe.write_text('[exclude]\nop_types = ["Conv", "Gemm", "Relu", "GlobalAveragePool", "Flatten"]\n')
    assert _build(model, calib, tmp_path / "out", "--recipe", str(recipe)) == 0
    out, err = capsys.readouterr()
    assert "0 quantized tensors" in out and "verdict: unquantized" in out
    assert err.strip().splitlines()[-1].startswith("dsqc: warning: NOTHING WAS QUANTIZED")
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"]["level"] == "unquantized"
    assert _build(model, calib, tmp_path / "strict", "--recipe", str(recipe), "--strict") == 2
    assert not (tmp_path / "strict").exists()


def test_ok_build_has_a_verdict(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(), model)
    calib = _npz(tmp_path / "calib.npz", "input", (3, 16, 16))
    assert _build(model, calib, tmp_path / "out", "--strict") == 0
    out, err = capsys.readouterr()
    assert "verdict: ok" in out and "dsqc: warning" not in err
    assert json.loads((tmp_path / "out" / "report.json").read_text())["verdict"]["level"] == "ok"


def test_scale_groups_split_only_far_apart_channels() -> None:
    rng = np.random.default_rng(0)
    boxes, scores = rng.normal(0, 100, (8, 4, 50)), rng.uniform(0, 0.01, (8, 18, 50))
    groups = scale_groups(np.concatenate([boxes, scores], axis=1))
    assert [g.tolist() for g in groups] == [list(range(4)), list(range(4, 22))]
    assert scale_groups(rng.normal(size=(16, 1000))) == []  # logits: one scale
    odd = rng.normal(size=(16, 1000))
    odd[:, 7] *= 1e-3
    odd[:, 9] = 0.0
    assert scale_groups(odd) == []  # one odd logit of a thousand, one dead one: not judged alone
    assert channel_ranges(np.array([0, 1, 2, 3, 7, 9, 10])) == "0-3, 7, 9-10"


def test_a_channel_groups_cosine_weighs_each_sample_by_its_energy() -> None:
    """NudeNet: on photos with no object the class scores are ~0.001 and int8 noise turns their direction
    around; the photos whose scores matter agree. The group's cosine counts samples by their energy in it
    (as its pooled SQNR does); a whole output's cosine stays the plain mean over samples."""
    rng = np.random.default_rng(0)
    boxes = rng.normal(0, 100, (8, 4, 50))
    scores = np.concatenate([rng.uniform(0.2, 0.9, (4, 18, 50)), rng.uniform(0, 0.002, (4, 18, 50))])
    ref = np.concatenate([boxes, scores], axis=1)
    got = ref + rng.uniform(-0.004, 0.004, ref.shape)  # one int8 step of a [0, 1] score is 0.004
    group = group_metrics(ref, got)[1]
    assert group["channels"] == "4-21" and group["cosine"] > 0.999 and group["sqnr_db"] > 40
    assert cosine(ref[:, 4:], got[:, 4:]) < 0.9  # the plain mean: four photos of noise
    assert cosine(ref[:, 4:], got[:, 4:], energy_weighted=True) == group["cosine"]
    assert judge({"y": {**_out(60.0, 0.9999), "groups": group_metrics(ref, got)}}, None, 10).level == "ok"


def test_judge_holds_each_channel_group_to_the_limits() -> None:
    outputs = {"y": {**_out(40.0, 0.9999), "groups": [
        {"channels": "0-3", "count": 4, "rms": 141.0, **_out(40.0, 0.9999)},
        {"channels": "4-21", "count": 18, "rms": 0.006, **_out(-3.06, 0.755)}]}}
    verdict = judge(outputs, None, 10)
    assert verdict.level == "collapsed"
    assert verdict.reasons[0] == "output 'y' channels 4-21 (RMS 0.006) SQNR -3.06 dB < 6 dB"


def detector_like_model(path: Path) -> Path:
    """A YOLO-style output: box pixels (4 channels, ×100) concatenated with class probabilities, the
    sigmoid of logits that pass an outlier-range tensor (+1000, as ``collapsing_model``) on the way."""
    eye = np.eye(4, dtype=np.float32)[:, :, None, None]
    inits = [numpy_helper.from_array(eye * 100, "w_box"), numpy_helper.from_array(eye, "w"),
             numpy_helper.from_array(np.full(4, 1000.0, np.float32), "up"),
             numpy_helper.from_array(np.full(4, -1006.0, np.float32), "down")]
    nodes = [helper.make_node("Conv", ["x", "w_box"], ["box"], name="box_head"),
             helper.make_node("Conv", ["x", "w", "up"], ["h"], name="shift_up"),
             helper.make_node("Conv", ["h", "w", "down"], ["logit"], name="class_head"),
             helper.make_node("Sigmoid", ["logit"], ["score"], name="score"),
             helper.make_node("Concat", ["box", "score"], ["y"], name="concat", axis=1)]
    return _save(path, nodes, inits, 8)


def test_detector_whose_scores_collapse_is_not_ok(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """One SQNR over the whole output measures the box pixels alone; each scale is judged on its own."""
    model = detector_like_model(tmp_path / "det.onnx")
    calib = _npz(tmp_path / "calib.npz", "x", (4, 8, 8))
    assert _build(model, calib, tmp_path / "out", "--no-repair") == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    y = report["metrics"]["verification"]["outputs"]["y"]
    assert y["sqnr_db"] > 30  # the whole output: box pixels
    groups = {g["channels"]: g for g in y["groups"]}
    assert set(groups) == {"0-3", "4-7"} and groups["4-7"]["sqnr_db"] < 6 < groups["0-3"]["sqnr_db"]
    assert report["metrics"]["verification"]["min_sqnr_db"] == groups["4-7"]["sqnr_db"]
    assert report["verdict"]["level"] == "collapsed"
    assert "channels 4-7" in report["verdict"]["reasons"][0]
    assert "    channels 4-7" in out and "judged on its own" in out


def test_accuracy_budget_holds_each_channel_group(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The advice of a collapsed verdict works: the budget measures the score channels too and keeps
    the two nodes that carry the outlier range out of int8."""
    model = detector_like_model(tmp_path / "det.onnx")
    calib = _npz(tmp_path / "calib.npz", "x", (4, 8, 8))
    assert _build(model, calib, tmp_path / "out", "--accuracy-budget", "sqnr:15") == 0
    assert "verdict: ok" in capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    mp = report["metrics"]["mixed_precision"]["accuracy"]
    assert mp["met"] and mp["plain_int8_reference_semantics"] < 6
    assert report["plan"]["nodes"]["box_head"]["precision"] == "int8"
    assert {report["plan"]["nodes"][n]["precision"] for n in ("shift_up", "class_head")} <= {"fp16", "fp32"}


def test_a_quantized_sample_that_rounds_to_zero_has_no_cosine_agreement() -> None:
    """A quiet sample whose int8 output is all zeros agrees with nothing (before: cosine 1, as 0/0 was
    read as agreement); an all-zero reference row still counts as agreement."""
    ref = np.array([[1.0, 2.0], [0.001, -0.002], [0.0, 0.0]])
    got = np.array([[1.0, 2.0], [0.0, 0.0], [0.0, 0.0]])
    assert cosine(ref, got) == pytest.approx(2 / 3)
    assert cosine(ref[2:], np.array([[0.5, 0.5]])) == 1.0
