"""``dsqc debug``: ranks a planted outlier first, lists every planned tensor, agrees with the build's
verification, and refuses folders and models that do not belong together in one line (exit 2)."""

from __future__ import annotations

import json
import logging
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.cli import main

OUTLIER_TENSOR = "r1"  # relu1's output: channel 0 sits at 100, the others near 1, per-tensor uint8


def outlier_activation_cnn(seed: int = 0, outlier: float = 100.0) -> onnx.ModelProto:
    """input[N,3,8,8] → conv1 → relu1 (r1) → conv2 → relu2 → GlobalAveragePool → Flatten → fc → logits.

    Channel 0 of ``r1`` carries a constant ``outlier`` that conv2 ignores (its weights there are 0), so the
    only harm it does is to stretch r1's activation range: the other channels get a handful of levels.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.normal(0, 0.1, (8, 3, 3, 3)).astype(np.float32)
    b1 = rng.normal(0, 0.1, 8).astype(np.float32)
    w1[0], b1[0] = 0.0, outlier
    w2 = rng.normal(0, 0.2, (8, 8, 3, 3)).astype(np.float32)
    w2[:, 0] = 0.0
    inits = {"w1": w1, "b1": b1, "w2": w2, "b2": rng.normal(0, 0.1, 8).astype(np.float32),
             "fc_w": rng.normal(0, 0.4, (10, 8)).astype(np.float32),
             "fc_b": rng.normal(0, 0.1, 10).astype(np.float32)}
    nodes = [
        helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], [OUTLIER_TENSOR], name="relu1"),
        helper.make_node("Conv", [OUTLIER_TENSOR, "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
        helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "outlier_activation_cnn",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        [numpy_helper.from_array(v, k) for k, v in inits.items()])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """One model, its data, and its onnx, trt and tflite builds (without timing)."""
    root = tmp_path_factory.mktemp("debug")
    model = root / "cnn.onnx"
    onnx.save(outlier_activation_cnn(), model)
    data = root / "calib.npz"
    np.savez(data, input=np.random.default_rng(1).normal(0, 1, (60, 3, 8, 8)).astype(np.float32))
    paths = {"root": root, "model": model, "data": data}
    no_bc = root / "no_bc.toml"  # tflite folders hold no QDQ model with the corrected biases
    no_bc.write_text("[boosters]\nbias_correction = false\n")
    for target in ("onnx", "trt", "tflite", "tflite_bc"):
        out = root / f"out_{target}"
        recipe = ["--recipe", str(no_bc)] if target == "tflite" else []
        assert main(["build", str(model), "--target", target.removesuffix("_bc"), "--calib", str(data),
                     "--no-latency", "-o", str(out), *recipe]) == 0
        paths[target] = out
    return paths


def test_a_bias_corrected_folder_without_qdq_model_says_the_replay_differs(
        built: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    data = str(built["data"])
    code, out, err = _debug(capsys, str(built["model"]), str(built["tflite_bc"]), "--calib", data)
    assert code == 0, err
    assert "note: bias correction changed biases of the tflite artifact after planning" in out
    code, out, err = _debug(capsys, str(built["model"]), str(built["tflite"]), "--calib", data)
    assert code == 0 and "bias correction changed" not in out


def _debug(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main(["debug", *args])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_planted_outlier_ranks_first_and_every_plan_tensor_is_listed(
        built: dict[str, Path], capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="dsqc.autoprec.switch_model"):
        code, out, err = _debug(capsys, str(built["model"]), str(built["onnx"]), "--calib",
                                str(built["data"]))
    assert code == 0, err
    assert "evaluated float" not in caplog.text  # every weight is replayed quantized: no such warning
    body = json.loads((built["onnx"] / "debug.json").read_text())
    ranked = sorted(body["points"], key=lambda p: p["rank"])
    first = ranked[0]
    assert first["tensor"] == OUTLIER_TENSOR and first["kind"] == "activation"
    assert first["producer"] == "conv1" and first["folded"] == "relu1"
    assert first["local_output_sqnr_db"] < ranked[1]["local_output_sqnr_db"] - 10
    # the table names it first among the activations, by its producer node
    rows = out.split("activations:")[1].splitlines()[2]
    assert OUTLIER_TENSOR in rows and "conv1 (Conv + relu1)" in rows
    report = json.loads((built["onnx"] / "report.json").read_text())
    singles = [p for p in body["points"] if p["kind"] != "weight+bias"]
    assert sorted(p["tensor"] for p in singles) == sorted(report["plan"]["tensors"])
    joints = {p["tensor"]: p for p in body["points"] if p["kind"] == "weight+bias"}
    assert set(joints) == {"w1 + b1", "w2 + b2", "fc_w + fc_b"}  # one per layer, every part marked
    assert {p["tensor"]: p["part_of"] for p in singles if p["part_of"]} == {
        t: j for j, joint in joints.items() for t in joint["parts"]}
    positions = [p["position"] for p in body["points"]]
    assert positions == sorted(positions)  # graph order
    weights = [p for p in body["points"] if p["kind"] == "weight"]
    assert {p["tensor"] for p in weights} == {"w1", "w2", "fc_w"}
    assert all(p["consumers"] for p in weights)
    assert all(p["accumulated_tensor_sqnr_db"] == p["local_tensor_sqnr_db"] for p in weights)
    # error accumulates: the tensor after the outlier is worse in the quantized model than on its own
    r2 = next(p for p in body["points"] if p["tensor"] == "r2")
    assert r2["accumulated_tensor_sqnr_db"] < r2["local_tensor_sqnr_db"] - 3


@pytest.mark.parametrize("target", ["onnx", "trt", "tflite"])
def test_final_output_matches_the_build_verification(built: dict[str, Path], target: str,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """onnx/trt: the QDQ file as the build ran it; and the switch model replaying it with every point on
    (trt: its lowered readers and folded biases; tflite, which has no QDQ file: the plan) agrees too."""
    report = json.loads((built[target] / "report.json").read_text())
    verified = report["metrics"]["verification"]["outputs"]["logits"]["sqnr_db"]
    out_json = built["root"] / f"debug_{target}.json"
    code, _, err = _debug(capsys, str(built["model"]), str(built[target]), "--calib", str(built["data"]),
                          "--json", str(out_json))
    assert code == 0, err
    logits = json.loads(out_json.read_text())["outputs"]["logits"]
    assert abs(logits["accumulated_sqnr_db"] - verified) < 0.1
    if target != "tflite":  # the replay follows the QDQ file's readers and stored constants exactly
        assert float(logits["replay_vs_qdq_sqnr_db"]) > 80
    if target != "onnx":  # verified with reference Q/DQ, as the replay runs (onnx: fused int8 kernels)
        assert abs(logits["reference_qdq_sqnr_db"] - verified) < 0.1
    if target == "tflite":
        final = next(p for p in json.loads(out_json.read_text())["points"] if p["tensor"] == "logits")
        assert abs(final["accumulated_tensor_sqnr_db"] - verified) < 0.1


def test_recorded_data_is_reused_from_the_build_folder_report(built: dict[str, Path],
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    """manifest.json keeps the calibration data as given (here an absolute path): found from any folder;
    once the file is gone, refused in one line that says to give --calib."""
    here, data = Path.cwd(), built["data"]
    moved = data.with_suffix(".moved")
    try:
        os.chdir(built["onnx"])
        code, out, err = _debug(capsys, "../cnn.onnx", ".", "--json", "../recorded.json")
        assert code == 0, err
        assert "calib.npz" in out
        data.rename(moved)
        code, _, err = _debug(capsys, "../cnn.onnx", ".", "--json", "../elsewhere.json")
    finally:
        if moved.exists():
            moved.rename(data)
        os.chdir(here)
    assert code == 2 and err.count("\n") == 1 and "--calib" in err and "cannot be re-loaded" in err
    assert not (built["root"] / "elsewhere.json").exists()


def _refused(capsys: pytest.CaptureFixture[str], args: list[str], *needles: str) -> None:
    code, _, err = _debug(capsys, *args)
    assert code == 2, err
    assert err.startswith("dsqc: error: ") and err.count("\n") == 1 and "Traceback" not in err, err
    for needle in needles:
        assert needle in err, err


def test_refuses_folders_that_are_not_int8_builds(built: dict[str, Path], tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    model, data = str(built["model"]), str(built["data"])
    _refused(capsys, [model, str(tmp_path / "nowhere"), "--calib", data], "no such folder")
    _refused(capsys, [model, str(tmp_path), "--calib", data], "no report.json")
    (tmp_path / "report.json").write_text("{not json")
    _refused(capsys, [model, str(tmp_path), "--calib", data], "report.json", "unreadable")
    fp32 = tmp_path / "fp32"
    assert main(["build", model, "--target", "onnx", "--precision", "fp32", "-o", str(fp32)]) == 0
    _refused(capsys, [model, str(fp32), "--calib", data], "--precision fp32")
    broken = tmp_path / "broken"
    shutil.copytree(built["onnx"], broken)
    (broken / "cnn.int8.onnx").unlink()
    (broken / "debug.json").unlink(missing_ok=True)
    _refused(capsys, [model, str(broken), "--calib", data], "cnn.int8.onnx", "missing")
    _refused(capsys, [model, str(built["onnx"]), "--calib", data, "--top", "0"], "--top 0")
    assert not (fp32 / "debug.json").exists() and not (broken / "debug.json").exists()


def test_refuses_a_model_that_is_not_the_built_one(built: dict[str, Path], tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other_weights.onnx"
    onnx.save(outlier_activation_cnn(seed=7), other)  # same graph, other weights
    folder, data = str(built["onnx"]), str(built["data"])
    _refused(capsys, [str(other), folder, "--calib", data], "MODEL is not the model")
    renamed = outlier_activation_cnn()
    renamed.graph.node[1].output[0] = renamed.graph.node[2].input[0] = "relu1_out"
    path = tmp_path / "renamed.onnx"
    onnx.save(renamed, path)
    _refused(capsys, [str(path), folder, "--calib", data], f"'{OUTLIER_TENSOR}'", "MODEL is not the model")
    _refused(capsys, [str(tmp_path / "absent.onnx"), folder, "--calib", data], "absent.onnx")
    _refused(capsys, [str(built["onnx"] / "cnn.int8.onnx"), folder, "--calib", data], "already quantized")


def test_debug_judges_a_detectors_score_channels_apart(tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    """As the verdict does: the YOLO-like output's score channels are their own row, and the local
    error that ranks the points is the worst part's — the outlier tensor the scores pass through comes
    first, though the whole output (box pixels) hardly notices it."""
    from tests.cli.test_verdict import detector_like_model

    model = detector_like_model(tmp_path / "det.onnx")
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(0).normal(size=(40, 4, 8, 8)).astype(np.float32))
    assert main(["build", str(model), "--target", "onnx", "--calib", str(data), "--no-latency",
                 "--no-repair", "-o", str(tmp_path / "out")]) == 0
    code, out, err = _debug(capsys, str(model), str(tmp_path / "out"), "--calib", str(data))
    assert code == 0, err
    body = json.loads((tmp_path / "out" / "debug.json").read_text())
    assert set(body["outputs"]) == {"y", "y[channels 0-3]", "y[channels 4-7]"}
    scores = body["outputs"]["y[channels 4-7]"]
    assert scores["accumulated_sqnr_db"] < 6 < body["outputs"]["y"]["accumulated_sqnr_db"]
    assert scores["build_verification_sqnr_db"] == pytest.approx(scores["accumulated_sqnr_db"], abs=0.01)
    first = min(body["points"], key=lambda p: p["rank"])
    assert first["tensor"] == "h" and first["local_output_sqnr_db"] < 6
    assert "y[channels 4-7]:" in out
