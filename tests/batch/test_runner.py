"""``dsqc batch`` on the local executor: real ``dsqc build`` child processes, one per item; a corrupt model,
an unknown op, a timeout and a memory overrun fail alone; a second run reuses the finished items."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.batch import fingerprint
from dsqc.batch.manifest import load_fleet
from dsqc.batch.runner import _unplaceable, run_batch
from dsqc.batch.worker import Outcome, _classify, _pack
from dsqc.driver.cli import main
from tests.conftest import conv_bn_model

EVIL = "<img src=x onerror=alert(1)>"


def _custom_op_model() -> onnx.ModelProto:
    """A Conv, then a node named like an XSS payload with an op from a domain nobody implements."""
    w = numpy_helper.from_array(np.ones((4, 3, 1, 1), np.float32), "w")
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("FancyGelu", ["c"], ["out"], name=EVIL, domain="com.acme")]
    graph = helper.make_graph(nodes, "custom", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                              [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("out", TensorProto.FLOAT, [1, 4, 8, 8])], [w])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)]
    return helper.make_model(graph, opset_imports=opsets)


@pytest.fixture
def fleet_toml(tmp_path: Path) -> Path:
    models = tmp_path / "m"
    models.mkdir()
    onnx.save(conv_bn_model(), str(models / "good.onnx"))
    for name in ("slow", "hog"):
        onnx.save(conv_bn_model(seed=1), str(models / f"{name}.onnx"))
    (models / "corrupt.onnx").write_bytes(b"\x08\x07garbage" * 50)
    onnx.save(_custom_op_model(), str(models / "custom.onnx"))
    manifest = tmp_path / "fleet.toml"
    manifest.write_text("""
out = "fleet"
targets = ["onnx"]
[limits]
timeout_s = 300
memory_mb = 2000
[build]
calib_samples = 16
eval_samples = 4
latency = false
[[models]]
path = "m/good.onnx"
targets = ["onnx", "tflite"]
[[models]]
path = "m/c*.onnx"
[[models]]
path = "m/slow.onnx"
timeout_s = 0.2
[[models]]
path = "m/hog.onnx"
memory_mb = 40
""")
    return manifest


def test_failures_stay_alone_and_a_second_run_reuses(fleet_toml: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["batch", str(fleet_toml), "--jobs", "2"]) == 1
    out = capsys.readouterr()
    lines = [line for line in out.out.splitlines() if line.startswith("[")]
    assert len(lines) == 6 and all(line.startswith(f"[{i}/6] ") for i, line in enumerate(lines, 1))
    fleet = fleet_toml.parent / "fleet"
    body = json.loads((fleet / "batch.json").read_text())
    by_id = {r["id"]: r for r in body["items"]}
    assert [r["id"] for r in body["items"]] == ["good/onnx", "good/tflite", "corrupt/onnx", "custom/onnx",
                                                "slow/onnx", "hog/onnx"]
    assert by_id["good/onnx"]["status"] == by_id["good/tflite"]["status"] == "ok"
    assert (fleet / "good/onnx/good.int8.onnx").is_file()
    assert (fleet / "good/tflite/good.int8.tflite").is_file()
    assert by_id["good/onnx"]["summary"]["min_sqnr_db"] > 20
    assert by_id["good/onnx"]["summary"]["quantization"] == "static int8"
    assert by_id["corrupt/onnx"]["status"] == "failed"
    assert "corrupt.onnx: not a valid ONNX model" in by_id["corrupt/onnx"]["reason"]
    assert by_id["custom/onnx"]["status"] == "failed" and "FancyGelu" in by_id["custom/onnx"]["reason"]
    assert by_id["slow/onnx"]["status"] == "timeout" and "0.2 s" in by_id["slow/onnx"]["reason"]
    assert by_id["hog/onnx"]["status"] == "memory" and "> 40 MB" in by_id["hog/onnx"]["reason"]
    assert by_id["hog/onnx"]["peak_rss_mb"] > 40
    for failed in ("corrupt", "custom", "slow", "hog"):
        assert not (fleet / failed).exists()
    page = (fleet / "index.html").read_text()
    assert EVIL not in page and "&lt;img src=x onerror=alert(1)&gt;" in page
    assert 'href="good/onnx/report.html"' in page and "TIMEOUT" in page and "OUT OF MEMORY" in page
    assert "<th>quantization</th>" in page and "<td>static int8</td>" in page
    assert "<script" not in page and "http" not in page

    assert main(["batch", str(fleet_toml), "--jobs", "2"]) == 1
    again = capsys.readouterr().out
    assert again.count("reused") >= 2 and "ok (2 reused), 4 failed" in again
    body2 = json.loads((fleet / "batch.json").read_text())
    assert body2["items"][0]["artifacts"] == body["items"][0]["artifacts"] and body2["cached"] == 2


class Recording:
    """An executor that records what it is asked to build and returns a canned bundle for each."""

    name = "recording"

    def __init__(self, bundle: bytes) -> None:
        self.bundle, self.built = bundle, []

    def run(self, items, scratch):  # type: ignore[no-untyped-def]
        for item in items:
            self.built.append(item.id)
            yield Outcome(item.id, "ok", "", 0.1, 1.0, 0, bundle=self.bundle)


def test_input_hash_decides_what_is_rebuilt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "bundle"
    folder.mkdir()
    (folder / "report.json").write_text("{}")
    onnx.save(conv_bn_model(), str(tmp_path / "a.onnx"))
    manifest = tmp_path / "f.toml"
    text = "targets = ['onnx', 'trt']\n[build]\neval_samples = {n}\n[[models]]\npath = 'a.onnx'\n"
    manifest.write_text(text.format(n=8))
    runs = []
    for force, n, model_seed in ((False, 8, 0), (False, 8, 0), (True, 8, 0), (False, 9, 0), (False, 9, 1)):
        manifest.write_text(text.format(n=n))
        onnx.save(conv_bn_model(seed=model_seed), str(tmp_path / "a.onnx"))
        executor = Recording(_pack(folder))
        run_batch(load_fleet(manifest), executor, force=force)
        runs.append(executor.built)
    monkeypatch.setattr(fingerprint, "source_digest", lambda: "another dsqc commit")
    executor = Recording(_pack(folder))
    run_batch(load_fleet(manifest), executor)
    runs.append(executor.built)
    both = ["a/onnx", "a/trt"]
    # first, unchanged, --force, new option, new model bytes, changed dsqc source
    assert runs == [both, [], both, both, both, both]


def test_signals_and_memory_errors_are_classified() -> None:
    assert _classify(-signal.SIGSEGV, "", ["Fatal Python error"], 0, 100, 10)[0] == "crashed"
    assert _classify(-signal.SIGABRT, "", [], 0, 100, 10) == ("crashed", "killed by SIGABRT")
    numpy_oom = "numpy._core._exceptions._ArrayMemoryError: Unable to allocate 6.75 MiB"
    status, reason = _classify(1, "", [numpy_oom], 2**27, 100, 10)
    assert status == "memory" and "Unable to allocate" in reason
    assert _classify(2, "", ["dsqc: error: m.onnx: bad"], 0, 100, 10) == ("failed", "m.onnx: bad")
    just_above = _classify(-signal.SIGKILL, "memory", [], 40 * 2**20 + 1000, 40, 10)
    assert just_above[0] == "memory" and "resident 40.1 MB > 40 MB" in just_above[1]  # never "40.0 > 40"
    crash = _classify(1, "", ["Traceback", "KeyError: 'x'"], 0, 100, 10)
    assert crash == ("crashed", "exit code 1: KeyError: 'x'")


def test_an_item_no_ray_node_can_hold_fails_instead_of_queueing_forever(tmp_path: Path) -> None:
    onnx.save(conv_bn_model(), str(tmp_path / "a.onnx"))
    (tmp_path / "f.toml").write_text("targets = ['onnx']\n[limits]\nmemory_mb = 8000\ncpus = 2\n"
                                     "[[models]]\npath = 'a.onnx'\n")
    item = load_fleet(tmp_path / "f.toml").items[0]
    small, big = {"CPU": 4.0, "memory": 4e9}, {"CPU": 2.0, "memory": 9e9}
    reason = _unplaceable(item, [small])
    assert "no Ray node offers 2 CPU and 8000 MB (largest: 4 CPU, 3815 MB)" in reason
    assert _unplaceable(item, [small, big]) == ""


def test_the_fleet_page_says_how_each_artifact_quantizes_and_whether_repair_chose_it() -> None:
    from dsqc.batch.summary import quantization

    def report(**metrics: object) -> dict[str, object]:
        return {"precision": "int8", "metrics": metrics}

    assert quantization(report()) == "static int8"
    assert quantization({"precision": "fp32", "metrics": {}}).startswith("fp32")
    assert quantization(report(dynamic={"mode": "dynamic"})) == "dynamic (--mode dynamic)"
    assert quantization(report(mixed_precision={"above_int8": 3})) == \
        "static, 3 nodes above int8 (--accuracy-budget)"
    assert quantization(report(dynamic={"mode": "dynamic"}, repair={"kept": "dynamic"})).startswith(
        "dynamic, chosen by repair")
    assert quantization(report(mixed_precision={"above_int8": 7}, repair={"kept": "mixed"})) == \
        "static, 7 nodes above int8, chosen by repair"
    assert quantization(report(repair={"kept": "int8"})) == "static int8 (repair found no better build)"


def test_the_fleet_page_gives_a_detectors_boxes_in_the_task_column() -> None:
    from dsqc.batch.index_html import render_index

    boxes = {"output": "output0", "images": 16, "fp32_boxes": 12, "boxes": 13, "matched": 11,
             "agreement": 11 / 13, "map50": 0.9}
    record = {"id": "nudenet/tflite", "model": "nudenet", "target": "tflite", "status": "ok", "seconds": 1.0,
              "bundle": None,
              "summary": {"verdict": "ok", "detections": boxes, "task": None}}
    page = render_index([record], "fleet.toml", "local", 1.0)
    assert "boxes vs FP32 11/12 matched, 13 found (agreement 0.846)" in page
