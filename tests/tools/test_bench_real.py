"""tools/bench/real: the metrics on hand-made data, the whole path on a tiny prepared case (fast), and the
full real-weight benchmark on the prepared cases (slow)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from tests.tools.test_bench import tiny_model
from tools.bench.real import metrics
from tools.bench.real.__main__ import main
from tools.bench.real.store import load_meta, real_dir, save_case


def det(boxes: list[list[float]], scores: list[float], classes: list[int]) -> metrics.Detections:
    return (np.array(boxes, np.float64).reshape(-1, 4), np.array(scores, np.float64), np.array(classes))


def test_box_agreement_needs_same_class_iou_half_and_one_to_one() -> None:
    ref = [det([[0, 0, 10, 10], [20, 20, 30, 30], [50, 50, 60, 60]], [0.9, 0.8, 0.7], [0, 1, 2])]
    got = [
        det(
            [
                [1, 1, 11, 11],  # IoU 0.68 with box 0, same class: match
                [0, 0, 10, 10],  # duplicate on box 0: one-to-one, no second match
                [20, 20, 30, 30],  # exact on box 1 but wrong class
                [53, 50, 63, 60],
            ],  # IoU 7/13 = 0.54 with box 2: match
            [0.95, 0.9, 0.9, 0.6],
            [0, 0, 2, 2],
        )
    ]
    assert metrics.box_agreement(ref, got) == pytest.approx(2 / 3)
    shifted = [det([[56, 50, 66, 60]], [0.9], [2])]  # IoU 4/16 = 0.25: no match
    assert metrics.box_agreement([det([[50, 50, 60, 60]], [0.9], [2])], shifted) == 0.0
    assert metrics.box_agreement([det([], [], [])], [det([], [], [])]) == 1.0
    assert metrics.box_agreement([det([], [], [])], shifted) == 0.0


def test_yolo_boxes_decodes_centre_format_and_suppresses_per_class() -> None:
    pred = np.zeros((4 + 2, 4), np.float32)  # 2 classes, 4 anchors
    pred[:4, 0] = [10, 10, 4, 6]  # class 0 score 0.9 → box (8, 7, 12, 13)
    pred[:4, 1] = [10.5, 10, 4, 6]  # class 0 score 0.8, IoU 0.78 with anchor 0: suppressed
    pred[:4, 2] = [10.5, 10, 4, 6]  # same place, class 1: kept
    pred[:4, 3] = [30, 30, 2, 2]  # below the score threshold
    pred[4, :2] = [0.9, 0.8]
    pred[5, 2:] = [0.6, 0.2]
    boxes, scores, classes = metrics.yolo_boxes(pred)
    np.testing.assert_allclose(boxes, np.array([[8, 7, 12, 13], [8.5, 7, 12.5, 13]]))
    np.testing.assert_allclose(scores, [0.9, 0.6])
    assert classes.tolist() == [0, 1]


def test_map50_ranks_by_score() -> None:
    ref = [det([[0, 0, 10, 10]], [1.0], [0]), det([[0, 0, 10, 10]], [1.0], [1])]
    assert metrics.map50(ref, ref) == 1.0
    # class 0: a false positive outscores the true positive → precision 1/2 at recall 1 → AP 0.5;
    # class 1: missed → AP 0
    got = [det([[40, 40, 50, 50], [0, 0, 10, 10]], [0.9, 0.8], [0, 0]), det([], [], [])]
    assert metrics.map50(ref, got) == pytest.approx(0.25)
    got_low_fp = [det([[40, 40, 50, 50], [0, 0, 10, 10]], [0.5, 0.8], [0, 0]), ref[1]]
    assert metrics.map50(ref, got_low_fp) == 1.0


def test_vad_agreement_and_sqnr() -> None:
    ref = np.array([0.1, 0.6, 0.9, 0.4], np.float32)
    got = np.array([0.1, 0.4, 0.9, 0.45], np.float32)
    out = metrics.vad_agreement(ref, got)
    assert out["speech_agreement"] == 0.75
    assert out["prob_mae"] == pytest.approx(0.0625, abs=1e-6)
    assert metrics.sqnr_db(np.array([3.0, 4.0]), np.array([3.0, 4.5])) == pytest.approx(
        10 * np.log10(25 / 0.25)
    )


def test_bench_runs_a_tiny_prepared_case(tmp_path: Path) -> None:
    """prepare-format case → dsqc CLI + ORT quantize_static → evaluation → REAL.md and json."""
    rng = np.random.default_rng(0)
    model = tiny_model(tmp_path / "tiny.onnx")
    x = rng.normal(0, 1, (48, 3, 8, 8)).astype(np.float32)
    data = tmp_path / "cases"
    save_case(
        "tiny", model, {"input": x[:32]}, {"input": x[32:]}, {"kind": "classifier", "inputs": "noise"}, data
    )
    assert set(load_meta(data)) == {"tiny"}
    md, js = tmp_path / "REAL.md", tmp_path / "real.json"
    rc = main(
        [
            "--data",
            str(data),
            "--md",
            str(md),
            "--json",
            str(js),
            "--methods",
            "minmax",
            "--ort-methods",
            "MinMax",
            "--no-reduce-range",
            "--rounds",
            "1",
            "--runs",
            "2",
        ]
    )
    assert rc == 0
    case = json.loads(js.read_text())["cases"]["tiny"]
    assert case["dsqc"] == "dsqc" and case["ort_best"] == "ort-minmax", case["jobs"]
    for label in ("dsqc", "ort-minmax"):
        row = case["rows"][label]
        assert 15 < row["sqnr_db"] < 80 and 0.5 < row["task"]["top1_agreement"] <= 1.0
        assert row["latency_ratio"] > 0 and row["size_ratio"] > 0  # (tiny: Q/DQ outweigh the weights)
    assert "| | ort best | ort-minmax |" in md.read_text()


def test_bench_reports_unprepared_cases(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(
            [
                "--data",
                str(tmp_path),
                "--cases",
                "resnet18_tv",
                "--json",
                str(tmp_path / "r.json"),
                "--md",
                str(tmp_path / "r.md"),
            ]
        )
        == 2
    )
    assert "resnet18_tv not prepared" in capsys.readouterr().err


@pytest.mark.slow
def test_full_real_weight_benchmark(tmp_path: Path) -> None:
    """Every prepared case (python -m tools.bench.real.prepare first); dsqc must quantize each one."""
    prepared = load_meta(real_dir())
    assert prepared, f"no prepared cases in {real_dir()}: run python -m tools.bench.real.prepare (see README)"
    js = tmp_path / "real.json"
    assert main(["--json", str(js), "--md", str(tmp_path / "REAL.md"), "--work", str(tmp_path / "runs")]) == 0
    cases = json.loads(js.read_text())["cases"]
    assert set(cases) == set(prepared)
    for name, case in cases.items():
        assert case["dsqc"] == "dsqc", f"{name}: dsqc failed: {case['jobs']['dsqc']}"
        assert case["rows"]["dsqc"]["sqnr_db"] > 10, name


def test_by_photo_splits_each_row_by_the_photo_of_each_crop(tmp_path: Path) -> None:
    """Crop i of a photo-crop case is held-out photo i % 8; each photo's SQNR is its own crops' alone."""
    import onnx

    from tools.bench.real import by_photo, photos

    rng = np.random.default_rng(0)
    fp32 = tiny_model(tmp_path / "tiny.onnx")
    shifted = onnx.load(fp32)  # a "quantized" model whose error is a constant output shift
    bias = next(t for t in shifted.graph.initializer if t.name == "fc_b")
    bias.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(bias) + 0.05, "fc_b"))
    onnx.save(shifted, tmp_path / "shifted.onnx")
    scale = (1 + np.arange(32) % 8)[:, None, None, None]  # each photo's crops their own size
    held = (rng.normal(0, 1, (32, 3, 8, 8)) * scale).astype(np.float32)
    inputs = f"held-out from {', '.join(photos.HELD_OUT_PHOTOS)}"
    save_case("tiny", fp32, {"input": held[:8]}, {"input": held}, {"kind": "classifier", "inputs": inputs},
              tmp_path / "cases")
    meta = load_meta(tmp_path / "cases")["tiny"]
    case = {"dsqc": "dsqc", "ort_best": "ort", "jobs": {"dsqc": {"model": str(fp32)},
                                                        "ort": {"model": str(tmp_path / "shifted.onnx")}}}
    split = by_photo.split_case(meta, tmp_path / "cases", case)
    assert split is not None and split["photos"] == 8 and split["photos_ahead_by_1db"] == 8
    from tools.bench.real import evaluate

    ref = evaluate.outputs(fp32, {"input": held})
    got = evaluate.outputs(tmp_path / "shifted.onnx", {"input": held})
    for k, name in enumerate(photos.HELD_OUT_PHOTOS):
        row = split["rows"][name]
        assert row["dsqc"]["sqnr_db"] == float("inf")
        assert row["ort_best"]["sqnr_db"] == pytest.approx(metrics.sqnr_db(ref[k::8], got[k::8]))
    assert split["rows"]["all"]["ort_best"]["sqnr_db"] == pytest.approx(metrics.sqnr_db(ref, got))
    assert by_photo.photo_of_each_crop({**meta, "inputs": "noise"}) is None  # not a photo-crop case
