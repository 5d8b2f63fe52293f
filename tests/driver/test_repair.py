"""A static int8 build whose own verdict is degraded or collapsed searches a mixed-precision plan for the
verdict's ok line and writes the better build (``dsqc.driver.repair``); ``--no-repair`` keeps int8."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper, numpy_helper

from dsqc.autoprec.precision_search import Budget
from dsqc.driver.cli import main
from dsqc.driver.repair import refuse_reason, repair_budget
from dsqc.driver.verdict import Thresholds
from dsqc.verify import Verification
from tests.cli.test_verdict import collapsing_model, detector_like_model


def _calib(path: Path) -> Path:
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 4, 8, 8)).astype(np.float32))
    return path


def _build(model: Path, calib: Path, out: Path, *extra: str) -> int:
    return main(["build", str(model), "--target", "onnx", "--calib", str(calib), "--no-latency",
                 "-o", str(out), *extra])


def _ver(sqnr: float, cos: float, drop: float | None = None, groups: tuple = ()) -> Verification:
    task = None if drop is None else {"fp32": 0.9, "quantized": 0.9 - drop, "drop": drop}
    return Verification({"y": {"sqnr_db": sqnr, "cosine": cos, "groups": list(groups)}}, 8, task=task)


def test_the_budget_is_the_first_ok_line_the_build_missed() -> None:
    limits = Thresholds()
    assert repair_budget(_ver(40.0, 0.9999), 10, limits) is None
    assert repair_budget(_ver(40.0, 0.9999, drop=0.005), 10, limits) is None
    assert repair_budget(_ver(12.0, 0.97), 10, limits) == "sqnr:15"
    assert repair_budget(_ver(3.0, 0.5), 10, limits) == "sqnr:15"  # collapsed: the same ok line
    assert repair_budget(_ver(40.0, 0.97), 10, limits) == "cosine:0.98"
    assert repair_budget(_ver(40.0, 0.9999, drop=0.03), 10, limits) == "drop:0.01"
    group = {"channels": "4-7", "rms": 0.1, "sqnr_db": 4.0, "cosine": 0.99}
    assert repair_budget(_ver(40.0, 0.9999, groups=(group,)), 10, limits) == "sqnr:15"
    assert repair_budget(_ver(12.0, 0.97), 0, limits) is None  # unquantized: nothing to repair
    assert repair_budget(_ver(25.0, 0.999), 10, Thresholds(degraded_sqnr_db=30.0)) == "sqnr:30"


def test_the_target_runtimes_own_outputs_count_as_the_verdict_counts_them() -> None:
    """A ``tflite`` build ok in ORT's reference but under the line in LiteRT is degraded, and repaired."""
    litert = {"logits (LiteRT)": {"sqnr_db": 14.4, "cosine": 0.9999}}
    assert repair_budget(_ver(15.1, 0.9999), 10, Thresholds()) is None
    assert repair_budget(_ver(15.1, 0.9999), 10, Thresholds(), litert) == "sqnr:15"


def test_a_plan_is_kept_only_if_it_quantizes_improves_and_beats_fp32_speed() -> None:
    sqnr = Budget("sqnr", 15.0)
    assert refuse_reason(sqnr, 7.9, 16.0, 120, 0.7) is None
    assert refuse_reason(sqnr, 7.9, 12.0, 120, None) is None  # better, though short of the line
    assert refuse_reason(sqnr, 7.9, 16.0, 0, 0.9) == "with no tensor left in int8 (an FP32 model)"
    assert refuse_reason(sqnr, 7.9, 7.5, 120, 0.7) == "no better than plain int8's 7.9 dB"
    assert "1.40× FP32's latency, slower than FP32" in (refuse_reason(sqnr, 7.9, 14.8, 120, 1.4) or "")
    refused = refuse_reason(sqnr, 7.9, 14.8, 120, 1.4, 0.99) or ""
    assert "slower than FP32 and than plain int8's 0.99×" in refused
    # where plain int8 runs no faster than FP32 either, a mixed plan as fast as it is kept
    assert refuse_reason(sqnr, 7.9, 16.0, 120, 1.09, 1.10) is None
    assert refuse_reason(sqnr, 7.9, 16.0, 120, 1.12, 1.10) is None  # within 5 % of plain int8
    assert "and than plain int8's 1.10×" in (refuse_reason(sqnr, 7.9, 16.0, 120, 1.3, 1.10) or "")
    drop = Budget("drop", 0.01)
    assert refuse_reason(drop, 0.05, 0.02, 10, None) is None and refuse_reason(drop, 0.05, 0.06, 10, None)


def test_a_collapsed_detector_is_repaired_by_default(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The YOLO-like output whose score channels collapse in plain int8 (the verdict test's model) comes
    out ok: the two nodes carrying the outlier range leave int8, the box head stays int8, exit 0."""
    model, calib = detector_like_model(tmp_path / "det.onnx"), _calib(tmp_path / "calib.npz")
    assert _build(model, calib, tmp_path / "out", "--strict") == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    repair = report["metrics"]["repair"]
    assert repair["budget"] == "sqnr:15" and repair["kept"] == "mixed"
    assert repair["int8"]["achieved"] < 6 and not repair["int8"]["met"]
    assert repair["mixed"]["met"] and repair["mixed"]["achieved"] >= 15
    assert report["metrics"]["verification"]["min_sqnr_db"] == pytest.approx(repair["mixed"]["achieved"])
    assert report["verdict"]["level"] == "ok" and report["failed"] is None
    assert report["plan"]["nodes"]["box_head"]["precision"] == "int8"
    assert {report["plan"]["nodes"][n]["precision"] for n in ("shift_up", "class_head")} <= {"fp16", "fp32"}
    assert "repair: plain int8 measured" in out and "is the artifact" in out and "--no-repair" in out
    assert (tmp_path / "out" / "plan.recipe.toml").exists()
    html = (tmp_path / "out" / "report.html").read_text()
    assert "ok line sqnr:15" in html and "mixed plan kept" in html
    assert "--accuracy-budget sqnr:15" not in html  # no budget was given


def test_no_repair_keeps_plain_int8(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = detector_like_model(tmp_path / "det.onnx"), _calib(tmp_path / "calib.npz")
    assert _build(model, calib, tmp_path / "int8", "--no-repair") == 0
    plain = json.loads((tmp_path / "int8" / "report.json").read_text())
    assert plain["verdict"]["level"] == "collapsed" and "repair" not in plain["metrics"]
    chosen = plain["plan"]["nodes"]
    assert {chosen[n]["precision"] for n in ("box_head", "shift_up", "class_head")} == {"int8"}


def test_a_repair_that_leaves_nothing_int8_keeps_int8(tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """The two-Conv outlier model only meets the ok line in float: an FP32 "repair" is no int8 build, so
    the collapsed int8 build is written, its verdict and a warning say so."""
    model, calib = collapsing_model(tmp_path / "collapse.onnx"), _calib(tmp_path / "calib.npz")
    assert _build(model, calib, tmp_path / "out") == 0
    err = capsys.readouterr().err
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["metrics"]["repair"]["kept"] == "int8" and report["verdict"]["level"] == "collapsed"
    assert {d["precision"] for d in report["plan"]["nodes"].values()} == {"int8"}
    assert "with no tensor left in int8 (an FP32 model): plain int8 kept" in err


def test_an_ok_build_runs_no_search(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from tests.conftest import conv_bn_model

    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(), model)
    data = tmp_path / "calib.npz"
    np.savez(data, input=np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype(np.float32))
    assert _build(model, data, tmp_path / "out") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert report["verdict"]["level"] == "ok"
    assert "repair" not in report["metrics"] and "mixed_precision" not in report["metrics"]


def test_tflite_refusal_times_litert() -> None:
    """``tflite`` has no ORT timing; its lowering times the int8 file against its float32 twin in LiteRT,
    and that ratio is what the slower-than-FP32 refusal reads."""
    from typing import Any, cast

    from dsqc.backends.registry import Lowered, get_backend

    job = cast(Any, None)
    timed = Lowered(job, metrics={"tflite": {"latency_ms": {"int8": 6.0, "float32": 12.0}}})
    assert get_backend("tflite").latency_ratio(timed) == 0.5
    assert get_backend("tflite").latency_ratio(Lowered(job)) is None  # --no-latency
    assert get_backend("onnx").latency_ratio(timed) is None  # timed by verification in ORT


def _repair_keeps_the_paired_plan(tmp_path: Path, target: str) -> bool:
    """Build the detector-like model for ``target`` (its int8 verdict repairs); whether the repair kept the
    mixed plan and reports the paired ratios (0.90× and 0.92× FP32) the fakes below answer."""
    model, calib = detector_like_model(tmp_path / "det.onnx"), _calib(tmp_path / "calib.npz")
    assert main(["build", str(model), "--target", target, "--calib", str(calib),
                 "-o", str(tmp_path / "out")]) == 0
    repair = json.loads((tmp_path / "out" / "report.json").read_text())["metrics"]["repair"]
    return bool(repair["kept"] == "mixed" and repair["int8"]["latency_ratio"] == pytest.approx(0.90)
                and repair["mixed"]["latency_ratio"] == pytest.approx(0.92))


def test_repair_times_both_builds_side_by_side(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each build's verification timed it apart: plain int8 0.89× FP32, the mixed plan 1.01× (the
    EfficientNet-B0 student on a busy CPU), which alone would refuse the plan. Timed again in the same
    rounds the two run alike, and the repair keeps the plan; the report gives the paired ratios."""
    import dsqc.driver.repair
    import dsqc.quant.latency_guard
    import dsqc.verify
    from dsqc.verify import Timing

    apart = iter([0.89, 1.01])
    paired: list[int] = []

    def verification_clock(protos: list[onnx.ModelProto], feeds: object) -> list[Timing]:
        ratio = next(apart)
        return [Timing(1.0, 1.0), Timing(ratio, ratio)]

    def side_by_side(protos: list[onnx.ModelProto], feeds: object) -> list[Timing]:
        paired.append(len(protos))
        return [Timing(1.0, 1.0), Timing(0.90, 0.90), Timing(0.92, 0.92)]

    monkeypatch.setattr(dsqc.quant.latency_guard, "compare_latency",
                        lambda protos, feeds: [Timing(1.0, 1.0)] + [Timing(0.9, 0.9)] * (len(protos) - 1))
    monkeypatch.setattr(dsqc.verify, "compare_latency", verification_clock)
    monkeypatch.setattr(dsqc.driver.repair, "compare_latency", side_by_side)
    assert paired == [] and _repair_keeps_the_paired_plan(tmp_path, "onnx") and paired == [3]
    assert refuse_reason(Budget("sqnr", 15.0), 5.0, 16.0, 10, 1.01, 0.89) is not None  # apart: refused


def test_tflite_repair_times_both_files_side_by_side_in_litert(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """``tflite``: each lowering timed its int8 file against the float32 file apart (0.89×, then 1.01×,
    which alone would refuse the plan); repair times the float32 file and both int8 files again in one
    interleaved LiteRT run and judges those ratios."""
    import dsqc.backends.tflite.backend as tflite_backend
    import dsqc.backends.tflite.runtime as tflite_runtime
    import dsqc.quant.latency_guard
    from dsqc.verify import Timing

    apart = iter([0.89, 1.01])
    paired: list[int] = []

    def lowering_clock(int8: bytes, fp32: bytes, sample: object, nhwc_in: bool = False) -> dict[str, float]:
        ratio = next(apart)
        return {"int8": ratio, "float32": 1.0, "speedup": 1 / ratio, "int8_cpu": ratio, "float32_cpu": 1.0,
                "speedup_cpu": 1 / ratio, "threads": 1, "runs": 40}

    def side_by_side(blobs: list[bytes], sample: object, nhwc_in: bool = False) -> list[Timing]:
        paired.append(len(blobs))
        assert blobs[1] != blobs[2]  # plain int8's file, then the mixed plan's
        return [Timing(1.0, 1.0), Timing(0.90, 0.90), Timing(0.92, 0.92)]

    monkeypatch.setattr(dsqc.quant.latency_guard, "compare_latency",
                        lambda protos, feeds: [Timing(1.0, 1.0)] + [Timing(0.9, 0.9)] * (len(protos) - 1))
    monkeypatch.setattr(tflite_backend.verify, "latency", lowering_clock)
    monkeypatch.setattr(tflite_runtime, "compare_latency", side_by_side)
    assert paired == [] and _repair_keeps_the_paired_plan(tmp_path, "tflite") and paired == [3]


def _loudness_mlp(path: Path) -> tuple[Path, Path]:
    """An MLP (MatMul → Relu → MatMul, no Conv) fed samples whose loudness spans three decades: one static
    input range rounds the quiet samples to zero (their cosine collapses), a scale taken from each
    request at run time holds them all."""
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.normal(size=(16, 32)).astype(np.float32), "w1"),
             numpy_helper.from_array(rng.normal(size=(32, 8)).astype(np.float32), "w2")]
    nodes = [helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("MatMul", ["r", "w2"], ["y"], name="fc2")]
    graph = helper.make_graph(nodes, "mlp",
                              [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 16])],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    loud = 10.0 ** rng.uniform(-3, 0, size=(48, 1))
    data = path.with_suffix(".npz")
    np.savez(data, x=(rng.normal(size=(48, 16)) * loud).astype(np.float32))
    return path, data


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_an_mlp_is_repaired_by_its_dynamic_build(tmp_path: Path, target: str,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    """Static int8 collapses on the quiet samples; the dynamic build meets the ok line, so it is the
    artifact and no mixed-precision search runs (one cannot be faster than plain int8)."""
    model, data = _loudness_mlp(tmp_path / "mlp.onnx")
    args = ["build", str(model), "--target", target, "--calib", str(data), "--no-latency"]
    assert main([*args, "-o", str(tmp_path / "int8"), "--no-repair"]) == 0
    plain = json.loads((tmp_path / "int8" / "report.json").read_text())
    assert plain["verdict"]["level"] == "collapsed"
    assert main([*args, "-o", str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    repair = report["metrics"]["repair"]
    assert repair["budget"] == "cosine:0.98" and repair["kept"] == "dynamic" and "mixed" not in repair
    assert not repair["int8"]["met"] and repair["dynamic"]["met"]
    assert report["metrics"]["dynamic"]["mode"] == "dynamic" and report["verdict"]["level"] == "ok"
    assert {n: d["precision"] for n, d in report["plan"]["nodes"].items() if n.startswith("fc")} == \
        {"fc1": "int8", "fc2": "int8"}
    assert "the dynamic build is the artifact" in out and "--no-repair keeps plain int8" in out
    assert "dynamic build" in (tmp_path / "out" / "report.html").read_text()
    provenance = json.loads((tmp_path / "out" / "manifest.json").read_text())["calibration"]
    assert provenance["samples"] == 39 and provenance["method"].startswith("no ranges")  # was: None, select
    assert main(["debug", str(model), str(tmp_path / "out")]) == 2  # no calibrated points to replay
    assert "repair kept the dynamic build; rebuild with --no-repair" in capsys.readouterr().err


def test_conv_models_and_recipes_dynamic_mode_would_betray_get_no_dynamic_build(tmp_path: Path) -> None:
    """A Conv has no fused dynamic kernel in ORT, trt has no dynamic mode, and int4 weights or learned
    rounding in the recipe would be dropped by it: repair then searches a mixed plan only."""
    from dsqc.driver.build_types import BuildRequest
    from dsqc.driver.pipeline import _start
    from dsqc.driver.repair import dynamic_fits
    from dsqc.driver.shared_stages import SharedStages

    mlp, data = _loudness_mlp(tmp_path / "mlp.onnx")
    det = detector_like_model(tmp_path / "det.onnx")

    def fits(model: Path, target: str = "onnx", recipe: str = "", mode: str | None = None,
             **options: str) -> bool:
        path = None
        if recipe:
            path = tmp_path / "r.toml"
            path.write_text(recipe)
        request = BuildRequest(model=model, target=target, out_dir=tmp_path / "o", calib=str(data),
                               recipe=path, backend_options=options, mode=mode)
        return dynamic_fits(_start(request, SharedStages()))

    assert fits(mlp) and fits(mlp, "tflite") and not fits(mlp, "trt") and not fits(det)
    rng = np.random.default_rng(2)  # a 1-D Conv (not a dynamic candidate) before a MatMul: Silero VAD's shape
    conv1d = helper.make_graph(
        [helper.make_node("Conv", ["x", "k"], ["c"], name="conv1d"),
         helper.make_node("Reshape", ["c", "flat"], ["f"], name="flatten"),
         helper.make_node("MatMul", ["f", "w"], ["y"], name="fc")], "conv1d",
        [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 1, 16])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(rng.normal(size=(4, 1, 3)).astype(np.float32), "k"),
         numpy_helper.from_array(np.array([1, 56], np.int64), "flat"),
         numpy_helper.from_array(rng.normal(size=(56, 8)).astype(np.float32), "w")])
    onnx.save(helper.make_model(conv1d, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "c1.onnx")
    assert not fits(tmp_path / "c1.onnx")  # decided from the graph before any data is read
    # an all-int8 file (accelerators) or int8 I/O: LiteRT's hybrid kernels are float between float tensors
    assert not fits(mlp, "tflite", float_undelegated="false") and not fits(mlp, "tflite", io="int8")
    assert not fits(mlp, recipe="[quantization]\nweight_dtype = \"int4\"\nblock_size = 0\n")
    assert not fits(mlp, recipe="[boosters]\nadaround = true\n")
    assert not fits(mlp, recipe="[[override]]\nnodes = \"fc1\"\nprecision = \"fp16\"\n")
    assert fits(mlp, recipe="[[override]]\nnodes = \"fc1\"\nprecision = \"fp32\"\n")
    # a mode the user named is kept: `--mode static` (or the recipe's quantization.mode) means static
    assert not fits(mlp, mode="static") and not fits(mlp, recipe="[quantization]\nmode = \"static\"\n")


def test_repair_keeps_the_fastest_build_that_meets_the_line_else_the_most_accurate() -> None:
    from typing import Any, cast

    from dsqc.driver.repair import Candidate, pick

    sqnr = Budget("sqnr", 15.0)
    none = cast(Any, None)

    def build(kind: str, achieved: float, ratio: float | None, tensors: int = 10) -> Candidate:
        return Candidate(kind, none, none, achieved, tensors, ratio)

    plain = build("int8", 9.0, 0.36)
    assert pick(sqnr, [plain, build("dynamic", 17.4, 0.35), build("mixed", 15.9, 0.52)])[0].kind == "dynamic"
    assert pick(sqnr, [plain, build("dynamic", 17.4, 0.60), build("mixed", 15.9, 0.52)])[0].kind == "mixed"
    assert pick(sqnr, [plain, build("dynamic", 14.0, 0.35), build("mixed", 15.9, 0.52)])[0].kind == "mixed"
    assert pick(sqnr, [plain, build("dynamic", 14.0, 0.35), build("mixed", 12.0, 0.52)])[0].kind == "dynamic"
    kept, why = pick(sqnr, [plain, build("dynamic", 8.0, 0.35), build("mixed", 16.0, 1.4)])
    assert kept is plain and "no better than" in (why["dynamic"] or "") and "slower" in (why["mixed"] or "")
    why = pick(sqnr, [plain, build("dynamic", 17.0, 1.3), build("mixed", 16.0, 1.4)])[1]
    assert "(--mode dynamic builds it anyway)" in (why["dynamic"] or "")
    assert "(--accuracy-budget sqnr:15 builds it anyway)" in (why["mixed"] or "")
    assert pick(sqnr, [plain, build("dynamic", 16.0, None), build("mixed", 17.0, None)])[0].kind == "mixed"
