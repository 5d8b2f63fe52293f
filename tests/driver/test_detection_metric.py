"""``--task-metric box-agreement``: YOLOv8 decode, NMS and matching on hand-made arrays
(``dsqc.detection``), the built-in metric's evaluation (``dsqc.verify.load_task_metric``), and builds
of a tiny YOLO-like detector judged, and budgeted, on box agreement with FP32."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc import detection
from dsqc.driver.cli import main
from dsqc.errors import DsqcError
from dsqc.verify import load_task_metric
from tests.cli.test_verdict import detector_like_model


def det(boxes: list[list[float]], scores: list[float], classes: list[int]) -> detection.Detections:
    return np.array(boxes, np.float64).reshape(-1, 4), np.array(scores, np.float64), np.array(classes)


def yolo_output(boxes: list[tuple[float, float, float, float, int, float]], classes: int = 2,
                anchors: int = 8) -> np.ndarray:
    """One image's ``[4 + classes, anchors]``: each (cx, cy, w, h, class, score) on its own anchor."""
    pred = np.zeros((4 + classes, anchors), np.float32)
    for a, (cx, cy, w, h, c, score) in enumerate(boxes):
        pred[:4, a] = cx, cy, w, h
        pred[4 + c, a] = score
    return pred


def test_counts_are_one_to_one_same_class_iou_half() -> None:
    ref = [det([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 1, 2])]
    got = [det([[1, 1, 11, 11],  # IoU 0.68 with box 0, same class: match
                [0, 0, 10, 10],  # duplicate on box 0: one-to-one, no second match
                [20, 20, 30, 30],  # exact on box 1 but wrong class
                [53, 50, 63, 60]],  # IoU 7/13 = 0.54 with box 2: match
               [0.95, 0.9, 0.9, 0.6], [0, 0, 2, 2])]
    counts = detection.box_counts(ref, got)
    assert (counts.matched, counts.reference, counts.found) == (2, 3, 4)
    assert detection.box_recall(ref, got) == pytest.approx(2 / 3)
    assert detection.box_agreement(ref, got) == pytest.approx(1 / 2)  # precision 2/4 is the lower
    assert detection.box_agreement(got, ref) == pytest.approx(1 / 2)  # min(recall, precision): symmetric


def test_no_boxes_on_one_side_or_both() -> None:
    none, one = [det([], [], [])], [det([[0, 0, 10, 10]], [0.9], [0])]
    assert detection.box_agreement(none, none) == 1.0
    assert detection.box_agreement(none, one) == 0.0  # boxes FP32 never found
    assert detection.box_agreement(one, none) == 0.0  # every FP32 box lost
    assert detection.box_agreement(one + none, one + none) == 1.0


def test_decode_thresholds_scores_and_suppresses_per_class() -> None:
    pred = yolo_output([(10, 10, 4, 6, 0, 0.9),  # box (8, 7, 12, 13)
                        (10.5, 10, 4, 6, 0, 0.8),  # IoU 0.78 with the first, same class: suppressed
                        (10.5, 10, 4, 6, 1, 0.6),  # same place, class 1: kept
                        (30, 30, 2, 2, 0, 0.25),  # at the score threshold: kept
                        (50, 50, 2, 2, 1, 0.24)])  # below it
    boxes, scores, classes = detection.yolo_boxes(pred)
    np.testing.assert_allclose(boxes, [[8, 7, 12, 13], [8.5, 7, 12.5, 13], [29, 29, 31, 31]])
    np.testing.assert_allclose(scores, [0.9, 0.6, 0.25])
    assert classes.tolist() == [0, 1, 0]


def test_metric_reads_the_first_output_in_either_layout() -> None:
    fp32 = np.stack([yolo_output([(10, 10, 8, 8, 0, 0.9), (40, 40, 8, 8, 1, 0.8)]),
                     yolo_output([(20, 20, 8, 8, 1, 0.7)])])  # [2, 6, 8]
    moved = fp32.copy()
    moved[0, 0, 1] = 60  # the class-1 box of image 0 moves away: 2 of 3 FP32 boxes matched, 2 of 3 found
    extra = fp32.copy()
    extra[1, :, 5] = [5, 50, 8, 8, 0.9, 0]  # a box FP32 never found: 3 of 3 matched, 3 of 4 found
    other = {"boxes_only": np.zeros((2, 4, 8), np.float32)}  # a second output is not read
    for layout in (lambda a: a, lambda a: a.transpose(0, 2, 1)):
        ref = {"y": layout(fp32), **other}
        assert detection.box_agreement_metric({"y": layout(fp32), **other}, ref) == 1.0
        assert detection.box_agreement_metric({"y": layout(moved), **other}, ref) == pytest.approx(2 / 3)
        assert detection.box_agreement_metric({"y": layout(extra), **other}, ref) == pytest.approx(3 / 4)


@pytest.mark.parametrize("shape", [(2, 8, 8, 8), (2, 4, 100), (2, 100, 4), (8, 84)])
def test_metric_refuses_an_output_that_is_no_yolo_layout(shape: tuple[int, ...]) -> None:
    value = np.zeros(shape, np.float32)
    with pytest.raises(DsqcError, match=rf"output 'y' has shape \[{', '.join(map(str, shape))}\]; "
                                        r"the metric expects a YOLOv8-style \[N, 4\+classes, anchors\]"):
        detection.box_agreement_metric({"y": value}, {"y": value})


def test_builtin_is_judged_against_fp32_and_unknown_names_are_listed() -> None:
    ref = {"y": np.stack([yolo_output([(10, 10, 8, 8, 0, 0.9), (40, 40, 8, 8, 1, 0.8)])])}
    got = {"y": ref["y"].copy()}
    got["y"][0, 5, 1] = 0.1  # the class-1 box falls below the score threshold
    task = load_task_metric("box-agreement").judge(ref, got, labels=None)
    assert task == {"fp32": 1.0, "quantized": 0.5, "drop": 0.5, "metric": "box-agreement"}
    with pytest.raises(DsqcError, match="--task-metric box_agreement: no such built-in metric "
                                        r"\(built-ins: box-agreement\); or module:function"):
        load_task_metric("box_agreement")
    top1 = load_task_metric(None).judge({"y": np.eye(2)}, {"y": np.eye(2)[::-1]}, labels=np.arange(2))
    assert top1 == {"fp32": 1.0, "quantized": 0.0, "drop": 1.0, "metric": "top1_accuracy"}


# -- builds -----------------------------------------------------------------------------------------------

def yolo_model(path: Path) -> Path:
    """x[N, 4, 8, 8] → y[N, 4 + 4 classes, 64 anchors], YOLOv8's layout: boxes 10 px wide on an 8 px grid
    (a Conv offset plus the grid), class scores the sigmoid of logits that pass an outlier-range tensor
    (+1000, as ``tests.cli.test_verdict.collapsing_model``): plain int8 loses most detections."""
    eye = np.eye(4, dtype=np.float32)[:, :, None, None]
    rows, cols = np.mgrid[0:8, 0:8].astype(np.float32)
    grid = np.stack([cols * 8 + 4, rows * 8 + 4, np.full((8, 8), 10.0), np.full((8, 8), 10.0)])[None]
    inits = [numpy_helper.from_array(eye * 2, "w_box"),
             numpy_helper.from_array(grid.astype(np.float32), "grid"),
             numpy_helper.from_array(eye, "w"), numpy_helper.from_array(np.full(4, 1000.0, np.float32), "up"),
             numpy_helper.from_array(np.full(4, -1001.0, np.float32), "down"),
             numpy_helper.from_array(np.array([0, 8, -1], np.int64), "shape")]
    nodes = [helper.make_node("Conv", ["x", "w_box"], ["offset"], name="box_head"),
             helper.make_node("Add", ["offset", "grid"], ["box"], name="box_grid"),
             helper.make_node("Conv", ["x", "w", "up"], ["h"], name="shift_up"),
             helper.make_node("Conv", ["h", "w", "down"], ["logit"], name="class_head"),
             helper.make_node("Sigmoid", ["logit"], ["score"], name="score"),
             helper.make_node("Concat", ["box", "score"], ["map"], name="concat", axis=1),
             helper.make_node("Reshape", ["map", "shape"], ["y"], name="flatten")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 8, 64])
    model = helper.make_model(helper.make_graph(nodes, "yolo", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _calib(path: Path) -> Path:
    np.savez(path, x=np.random.default_rng(0).normal(size=(40, 4, 8, 8)).astype(np.float32))
    return path


def _build(model: Path, calib: Path, out: Path, *extra: str) -> int:
    return main(["build", str(model), "--target", "onnx", "--calib", str(calib), "--no-latency",
                 "--task-metric", "box-agreement", "-o", str(out), *extra])


def test_plain_int8_is_judged_on_box_agreement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = yolo_model(tmp_path / "yolo.onnx"), _calib(tmp_path / "calib.npz")
    assert _build(model, calib, tmp_path / "out", "--no-repair") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    task = report["metrics"]["verification"]["task"]
    assert task["metric"] == "box-agreement" and task["fp32"] == 1.0
    assert 0.0 <= task["quantized"] < 0.9, "the collapsed class scores lose detections"
    assert task["drop"] == pytest.approx(1.0 - task["quantized"])
    assert "box-agreement dropped" in capsys.readouterr().out


def test_drop_budget_is_judged_on_box_agreement(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """No labels: the search and the final check measure the drop in agreement with FP32's boxes."""
    model, calib = yolo_model(tmp_path / "yolo.onnx"), _calib(tmp_path / "calib.npz")
    assert _build(model, calib, tmp_path / "out", "--accuracy-budget", "drop:0.05") == 0
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    accuracy = report["metrics"]["mixed_precision"]["accuracy"]
    task = report["metrics"]["verification"]["task"]
    assert accuracy["budget"] == "drop:0.05" and accuracy["metric"] == "box-agreement" and accuracy["met"]
    assert accuracy["plain_int8_reference_semantics"] > 0.3, "the search measured int8's box agreement"
    assert accuracy["achieved"] == pytest.approx(task["drop"]) and task["drop"] <= 0.05
    assert task["metric"] == "box-agreement" and task["quantized"] >= 0.95
    assert report["plan"]["nodes"]["box_head"]["precision"] == "int8"
    out = capsys.readouterr().out
    assert "accuracy drop:0.05 (box-agreement) →" in out
    assert "a task drop above 0.05" in out, "the budget is the verdict's drop limit"
    assert report["verdict"]["level"] == "ok", report["verdict"]


def test_bad_metric_names_and_outputs_fail_in_one_line(tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    calib = _calib(tmp_path / "calib.npz")
    code = main(["build", str(yolo_model(tmp_path / "yolo.onnx")), "--target", "onnx", "--calib", str(calib),
                 "--task-metric", "boxes", "-o", str(tmp_path / "x")])
    assert code == 2 and not (tmp_path / "x").exists()
    err = capsys.readouterr().err
    assert "--task-metric boxes: no such built-in metric (built-ins: box-agreement)" in err
    assert _build(detector_like_model(tmp_path / "det.onnx"), calib, tmp_path / "det", "--no-repair") == 2
    last = capsys.readouterr().err.strip().splitlines()[-1]
    assert "output 'y' has shape [8, 8, 8, 8]; the metric expects a YOLOv8-style" in last


def test_a_yolo_head_is_found_through_reshapes_and_nothing_else_is(tmp_path: Path) -> None:
    model = onnx.load(yolo_model(tmp_path / "yolo.onnx"))  # Concat(boxes, Sigmoid) → Reshape → y
    assert detection.yolo_output(model) == "y"
    for node in model.graph.node:
        if node.op_type == "Sigmoid":
            node.op_type = "Relu"  # scores that are no probabilities: not a YOLOv8 head
    assert detection.yolo_output(model) is None


@pytest.mark.parametrize("target", ["onnx", "tflite"])
def test_every_detector_build_reports_its_boxes_against_fp32(tmp_path: Path, target: str,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    """As a classifier's build reports top-1 agreement, a detector's reports its boxes against FP32's
    without --task-metric: ORT's run and, on tflite, LiteRT's; the verdict does not read it."""
    model, out = yolo_model(tmp_path / "yolo.onnx"), tmp_path / "out"
    assert main(["build", str(model), "--target", target, "--calib", str(_calib(tmp_path / "c.npz")),
                 "--no-latency", "--no-repair", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    verification = report["metrics"]["verification"]
    boxes = verification["detections"]
    assert boxes["output"] == "y" and boxes["images"] == verification["samples"] == 8
    assert boxes["fp32_boxes"] > 0 and 0 <= boxes["matched"] <= min(boxes["fp32_boxes"], boxes["boxes"])
    assert boxes["agreement"] == pytest.approx(min(boxes["matched"] / boxes["fp32_boxes"],
                                                   boxes["matched"] / max(boxes["boxes"], 1)))
    assert verification["task"] is None  # informational: the verdict reads no task drop from it
    printed = capsys.readouterr().out
    assert f"{boxes['matched']} of {boxes['fp32_boxes']} FP32 boxes matched" in printed
    html = (out / "report.html").read_text()
    assert "boxes vs FP32 (y, a YOLOv8 head; 8 images)" in html
    if target == "tflite":
        litert = report["metrics"]["tflite"]["verification"]["detections"]
        assert litert["fp32_boxes"] == boxes["fp32_boxes"] and "(LiteRT interpreter)" in html
