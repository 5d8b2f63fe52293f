"""``dsqc analyze``: one calibration, one-node variants, a ranked table, JSON and a plot."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from dsqc.autoprec.analyze import AnalyzeRequest, analyze
from dsqc.autoprec.plan_space import Setting, build_space, setting_for
from dsqc.autoprec.switch_model import SwitchModel
from dsqc.backends.registry import get_backend
from dsqc.calibration.data import SampleSet
from dsqc.driver.cli import main
from dsqc.driver.pipeline import normalize
from dsqc.errors import DsqcError
from dsqc.ir import Model
from dsqc.metrics import sqnr_db
from dsqc.model_io import INT4_OPSET, upgrade_opset
from dsqc.pass_infra import PassManager
from dsqc.passes.insert_qdq import InsertQDQ
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import Precision
from tests.sensitivity._models import OUTLIER_NODE, late_input_mlp, outlier_cnn, save_cnn

AVX2 = {"isa": "avx2"}  # the same weight grid on any build machine


def _seven_bits(folder: Path) -> Path:
    """7-bit weights, which the planted outlier is sized for (avx2 would widen them where it can)."""
    path = folder / "w7.toml"
    path.write_text("[quantization]\nweight_limit = 64\n")
    return path


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return save_cnn(tmp_path_factory.mktemp("cnn"))


def test_planted_outlier_layer_ranks_first(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    result = analyze(AnalyzeRequest(model=model, out_dir=tmp_path / "out", calib=str(data), samples=8,
                                     progress=False, backend_options=AVX2, recipe=_seven_bits(tmp_path)))
    ranked = result.sensitivity.nodes
    assert ranked[0].name == OUTLIER_NODE
    top = ranked[0]
    assert top.variants["w8"].worst("sqnr") < top.variants["a8"].worst("sqnr"), "its weights are the problem"
    assert set(top.variants) == {"w8", "a8"} and "w4" in ranked[[n.name for n in ranked].index("fc")].variants
    body = json.loads((tmp_path / "out" / "sensitivity.json").read_text())
    assert [n["node"] for n in body["nodes"]] == [n.name for n in ranked]
    assert body["nodes"][0]["variants"]["w8"]["outputs"]["logits"]["sqnr_db"] < 35
    assert (tmp_path / "out" / "sensitivity.png").read_bytes()[:4] == b"\x89PNG"
    assert result.timings["calibration"] > 0 and result.ratio > 1


def test_cli_subset_metric_and_table(cnn: tuple[Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    model, data = cnn
    out = tmp_path / "subset"
    assert main(["analyze", str(model), "--calib", str(data), "-o", str(out), "--nodes", "conv[12]$",
                 "--metric", "mse", "--samples", "4", "--no-plot"]) == 0
    printed = capsys.readouterr().out
    body = json.loads((out / "sensitivity.json").read_text())
    assert [n["node"] for n in body["nodes"]] == [OUTLIER_NODE, "conv1"]
    assert body["metric"] == "mse" and body["samples"] == 4
    assert "conv2" in printed and "conv3" not in printed and not (out / "sensitivity.png").exists()


def test_bad_node_regex_is_one_line_error(cnn: tuple[Path, Path], tmp_path: Path,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    model, data = cnn
    assert main(["analyze", str(model), "--calib", str(data), "-o", str(tmp_path / "x"),
                 "--nodes", "nothing_like_this"]) == 2
    assert "matches none" in capsys.readouterr().err
    assert not (tmp_path / "x").exists()


@pytest.fixture(scope="module", params=[True, False], ids=["float-readers-read-float", "dq-for-all"])
def space_and_switch(request: pytest.FixtureRequest) -> tuple:
    fp32 = normalize(outlier_cnn()).model
    rng = np.random.default_rng(3)
    calib = SampleSet({"input": rng.normal(0, 1, (24, 3, 16, 16)).astype(np.float32)}, "calib")
    profile = dataclasses.replace(get_backend("onnx").profile, float_readers_read_float=request.param)
    space = build_space(fp32, profile, Recipe(method="minmax"), calib)  # ties as the tolerance assumes
    return space, SwitchModel(space), rng.normal(0, 1, (6, 3, 16, 16)).astype(np.float32)


def test_restricting_every_node_to_int8_gives_the_int8_plan(space_and_switch: tuple) -> None:
    space, _, _ = space_and_switch
    plan = space.restrict({n: setting_for(Precision.INT8, bool(c.consts)) for n, c in space.choices.items()})
    assert set(plan.tensors) == set(space.plan8.tensors)
    assert all(plan.tensors[t] is space.plan8.tensors[t] for t in plan.tensors)
    assert plan.folded_activations == space.plan8.folded_activations
    precisions = {n: d.precision for n, d in space.plan8.nodes.items()}
    assert {n: d.precision for n, d in plan.nodes.items()} == precisions


@pytest.mark.parametrize("settings", [
    {},
    {OUTLIER_NODE: Setting("int8", False)},
    {"conv3": Setting(None, True)},
    {"fc": Setting("int4")},
    {"conv1": Setting("int8", True), OUTLIER_NODE: Setting("fp16"), "conv3": Setting("int8", True)},
    {"conv1": Setting(), OUTLIER_NODE: Setting("int8", True), "conv3": Setting(), "gap": Setting(None, True)},
])
def test_switch_model_equals_the_qdq_model_of_the_plan(space_and_switch: tuple, settings: dict) -> None:
    """The one switchable session computes what InsertQDQ's model of the same plan computes (ORT reference
    Q/DQ semantics), up to float rounding — which can flip a rounding tie of a later Q by one step."""
    space, switch, x = space_and_switch
    plan = space.restrict(settings)
    got = switch.bind([{"input": x}], segmented=False).run(plan)["logits"]
    fp32 = space.fp32
    if any(d.precision is Precision.INT4 for d in plan.nodes.values()):
        fp32 = upgrade_opset(fp32, INT4_OPSET)
    model = Model.from_proto(fp32)
    PassManager([InsertQDQ(plan, space.profile.float_readers_read_float)]).run(model)
    proto = model.to_proto()
    proto.ir_version = fp32.ir_version
    if any(d.precision is Precision.FP16 for d in plan.nodes.values()):  # FP16 rounding, as the switch does
        for init in proto.graph.initializer:
            if init.name == "w2":
                from onnx import numpy_helper
                value = numpy_helper.to_array(init).astype(np.float16).astype(np.float32)
                init.CopyFrom(numpy_helper.from_array(value, init.name))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    want = ort.InferenceSession(proto.SerializeToString(), options,
                                providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    assert sqnr_db(want, got) > 60
    assert np.mean(np.abs(got - want)) < 1e-4


def test_bad_metric_is_rejected(space_and_switch: tuple) -> None:
    from dsqc.autoprec.sensitivity import analyze_space

    space, switch, x = space_and_switch
    with pytest.raises(DsqcError, match="--metric"):
        analyze_space(space, switch, SampleSet({"input": x}, "x"), metric="psnr")


def test_suffix_segments_give_the_full_runs_results() -> None:
    """Variants starting late run only the suffix, fed cached FP32 cut tensors and the graph inputs read
    after the cut; their outputs equal full runs."""
    from dsqc.autoprec.sensitivity import _variants

    fp32 = normalize(late_input_mlp()).model
    rng = np.random.default_rng(4)
    feeds = {"x": rng.normal(0, 1, (20, 16)).astype(np.float32),
             "y": rng.normal(0, 1, (20, 8)).astype(np.float32)}
    space = build_space(fp32, get_backend("onnx").profile, Recipe(), SampleSet(feeds, "calib"))
    switch = SwitchModel(space)
    plans = [space.restrict({c.name: s}) for c in space.choices.values() for _, s in _variants(c)]
    switch.plan_segments([switch.feeds_for(p)[1] for p in plans], count=3)
    assert len(switch.starts) > 1
    batch = [{k: v[:5] for k, v in feeds.items()}]
    segmented, full = switch.bind(batch), switch.bind(batch, segmented=False)
    for plan in plans:
        np.testing.assert_allclose(segmented.run(plan)["out"], full.run(plan)["out"], rtol=0, atol=1e-6)
