"""tools/bench: the whole code path on a tiny model (fast), and the full benchmark (slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from tools.bench.__main__ import main
from tools.bench.checks import checks

REPO = Path(__file__).resolve().parents[2]


def tiny_model(path: Path) -> Path:
    """input[N,3,8,8] → Conv → Relu → GlobalAveragePool → Flatten → Gemm → output[N,5]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, (8, 3, 3, 3)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 8).astype(np.float32), "b"),
             numpy_helper.from_array(rng.normal(0, 0.3, (5, 8)).astype(np.float32), "fc_w"),
             numpy_helper.from_array(rng.normal(0, 0.1, 5).astype(np.float32), "fc_b")]
    nodes = [helper.make_node("Conv", ["input", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("GlobalAveragePool", ["r"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["output"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "tiny", [helper.make_tensor_value_info("input", TensorProto.FLOAT,
                                                                             ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 5])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_bench_smoke(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # the bench puts its frozen source copy on PYTHONPATH for its workers; undo that after the test, or a
    # later test's fresh venv imports dsqc from this tmp folder (tests/cli/test_package.py did)
    monkeypatch.setenv("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
    model = str(tiny_model(tmp_path / "tiny.onnx"))
    out = tmp_path / "out"
    assert main(["--models", model, "--quick", "--calib-samples", "16", "--dsqc-methods", "",
                 "--ort-methods", "MinMax", "--no-reduce-range", "--calib-model", model,
                 "--calib-row-samples", "16", "--runs", "10",
                 "--out", str(out), "--workdir", str(tmp_path / "work")]) == 0
    results = json.loads((out / "results.json").read_text())
    res = results["models"]["tiny"]
    assert set(res["quantize"]) == {"dsqc", "ort-minmax"}  # dsqc = a default build
    for q in res["quantize"].values():
        assert q["ok"], q
        assert q["wall_s"] > 0 and q["peak_rss_mb"] >= q["base_rss_mb"] > 0
        assert q["dsqc_source"].startswith(str(tmp_path / "work" / "src"))  # the frozen copy, not the tree
    rows = res["evaluation"]["rows"]
    assert set(rows) == {"fp32", "dsqc", "ort-minmax"}
    assert rows["dsqc"]["sqnr_db"] > 15
    assert rows["dsqc"]["size_ratio"] > 0  # tiny model: Q/DQ overhead can exceed the weights
    assert rows["dsqc"]["latency_ratio"] > 0 and rows["dsqc"]["cpu_latency_ratio"] > 0
    assert "top1_agreement" in rows["dsqc"]["task"]
    [calib] = results["calibration"]
    assert calib["dsqc calibrate(entropy)"]["ok"] and calib["ORT quantize_static(Entropy)"]["ok"]
    text = (out / "RESULTS.md").read_text()
    assert "| dsqc (default: " in text and "Calibration only: tiny" in text and "Machine:" in text
    assert any("entropy calibration wall" in claim for claim, _, _ in checks(results))


def test_worker_reports_failure(tmp_path: Path) -> None:
    spec = tmp_path / "spec.json"
    result = tmp_path / "result.json"
    spec.write_text(json.dumps({"mode": "quantize-ort", "method": "MinMax",
                                "fp32": str(tmp_path / "none.onnx"), "calib": str(tmp_path / "none.npz"),
                                "n_calib": 4,
                                "out": str(tmp_path / "q.onnx"), "result": str(result)}))
    proc = subprocess.run([sys.executable, "-m", "tools.bench.worker", str(spec)], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 1
    assert json.loads(result.read_text())["ok"] is False


@pytest.mark.slow
def test_full_bench_quick(tmp_path: Path) -> None:
    """Every default model through every quantizer (--quick sample counts): minutes, not seconds."""
    assert main(["--quick", "--out", str(tmp_path), "--workdir", str(REPO / ".cache" / "bench")]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results["models"]) >= {"mnist", "minilm", "resnet18_like", "mobilenetv2_like",
                                      "efficientnet_like", "small_transformer"}
    assert all(r["evaluation"].get("ok") for r in results["models"].values())
