"""``dsqc build --target a,b,c``: one calibration, per-target folders identical to single-target builds,
the parameter map and the cross-target agreement run by each target's own runtime."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest

from dsqc.driver.cli import main

MNIST = Path(__file__).parents[2] / "models" / "mnist_cnn.onnx"
COMMON = ["--calib", "mnist", "--calib-samples", "32", "--eval-samples", "16", "--no-latency"]


def _files(folder: Path) -> dict[str, bytes]:
    """Every file below ``folder`` but the bundle's provenance: manifest.json and report.html name the
    command that made them (``--target a,b`` vs ``--target a``), build_info.json holds the time."""
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and p.name not in ("manifest.json", "report.html", "build_info.json")}


@pytest.fixture(scope="module")
def multi(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("multi") / "out"
    assert main(["-q", "build", str(MNIST), "--target", "onnx,tflite,hls", *COMMON, "-o", str(out)]) == 0
    return out


def test_each_target_folder_is_byte_identical_to_its_single_target_build(multi: Path, tmp_path: Path) -> None:
    for target in ("onnx", "tflite", "hls"):
        single = tmp_path / target
        assert main(["-q", "build", str(MNIST), "--target", target, *COMMON, "-o", str(single)]) == 0
        assert _files(multi / target) == _files(single), target


def test_parameter_map_has_every_quantized_tensor_of_every_target(multi: Path) -> None:
    rows = list(csv.DictReader((multi / "params.csv").open()))
    for target in ("onnx", "tflite", "hls"):
        plan = json.loads((multi / target / "report.json").read_text())["plan_summary"]
        assert plan and any(r["target"] == target for r in rows)
    by_tensor: dict[str, set[str]] = {}
    for row in rows:
        by_tensor.setdefault(row["tensor"], set()).add(row["target"])
        assert float(row["scale"].split()[0]) > 0 and row["dtype"] in ("int8", "uint8", "int4", "int32")
    assert any(len(targets) == 3 for targets in by_tensor.values())  # side by side
    hls = [r for r in rows if r["target"] == "hls"]
    assert any(r["multiplier"] and r["shift"] for r in hls), "hls rows carry multiplier + shift"
    assert [r["tensor"] for r in rows] == sorted(r["tensor"] for r in rows)


def test_agreement_runs_every_artifact_and_compares_every_pair(multi: Path) -> None:
    agreement = json.loads((multi / "agreement.json").read_text())
    assert set(agreement["vs_fp32"]) == {"onnx", "tflite", "hls"} and not agreement["not_run"]
    assert agreement["samples"] == 16  # the hls testbench's vectors
    assert "gcc" in agreement["vs_fp32"]["hls"]["runtime"]
    assert "LiteRT" in agreement["vs_fp32"]["tflite"]["runtime"]
    for metrics in agreement["vs_fp32"].values():
        assert metrics["min_sqnr_db"] > 25 and metrics["top1_agreement"] >= 0.9
    pairs = {(p["a"], p["b"]): p for p in agreement["pairwise"]}
    assert set(pairs) == {("onnx", "tflite"), ("onnx", "hls"), ("tflite", "hls")}
    # the same plan family and integer kernels: tflite and hls stay within a few LSBs of each other
    assert pairs[("tflite", "hls")]["max_lsb"] is not None and pairs[("tflite", "hls")]["max_lsb"] <= 8
    index = json.loads((multi / "targets.json").read_text())
    assert set(index["targets"]) == {"onnx", "tflite", "hls"}
    assert {"normalize", "data"} <= set(index["shared_stages_reused"])


def test_target_options_split_by_prefix_and_by_who_takes_them(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "bad"
    code = main(["build", str(MNIST), "--target", "onnx,tflite", *COMMON, "-B", "parallelism=4",
                 "-o", str(out)])
    err = capsys.readouterr().err
    assert code == 2 and "parallelism" in err and "hls." in err and not out.exists()
    code = main(["build", str(MNIST), "--target", "onnx,tflite", *COMMON, "-B", "hls.parallelism=4",
                 "-o", str(out)])
    assert code == 2 and "'hls' is not one of the targets built" in capsys.readouterr().err
    code = main(["build", str(MNIST), "--target", "onnx,nosuch", *COMMON, "-o", str(out)])
    assert code == 2 and "registered targets" in capsys.readouterr().err and not out.exists()


def test_a_failing_target_leaves_nothing_written(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["build", str(MNIST), "--target", "onnx,hls", *COMMON, "-B", "hls.tb_vectors=0",
                 "-o", str(out)])
    assert code == 2 and "tb_vectors" in capsys.readouterr().err
    assert not out.exists() and not list(tmp_path.iterdir())



def test_hls_artifact_rerun_from_the_folder_matches_the_build_time_csim(tmp_path: Path) -> None:
    import numpy as np
    import onnx

    from dsqc.backends.registry import WrittenBuild, get_backend
    from dsqc.driver.build_types import BuildRequest
    from dsqc.driver.pipeline import build

    out = tmp_path / "hls"
    result = build(BuildRequest(model=MNIST, target="hls", out_dir=out, calib="mnist", calib_samples=32,
                                eval_samples=16, measure_latency=False))
    assert result.runtime_outputs is not None and result.runtime_outputs["logits"].shape == (16, 10)
    model = onnx.load(str(MNIST))
    written = WrittenBuild(out, result.artifacts, result.options, result.metrics, result.plan,
                           [i.name for i in model.graph.input], [o.name for o in model.graph.output])
    # no outputs at hand: compiles and runs the C again
    again = get_backend("hls").run_artifact(written, [])
    assert again is not None
    np.testing.assert_array_equal(again["logits"], result.runtime_outputs["logits"])
