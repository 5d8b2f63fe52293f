"""The closing-note numbers as slow tests (``pytest -m slow tests/sensitivity``)."""

from __future__ import annotations

from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_planted_mnist_plain_int8_loses_a_point_the_plan_meets_half_a_point(tmp_path: Path) -> None:
    from tools.mixed_precision.planted_mnist import run

    results = run(tmp_path, outlier=48.0, budget="drop:0.005")
    assert results["int8"]["task"]["drop"] > 0.01
    mixed = results["mixed"]
    assert mixed["failed"] is None and mixed["task"]["drop"] <= 0.005
    mp = mixed["mixed_precision"]
    assert mp["above_int8"] / mp["graph_nodes"] < 0.10


def test_analyze_a_50_node_cnn_within_3x_its_calibration(tmp_path: Path) -> None:
    import numpy as np

    from dsqc.autoprec.analyze import AnalyzeRequest, analyze
    from dsqc.models.export import zoo_model

    model = zoo_model("resnet18_like", tmp_path)
    data = tmp_path / "data.npz"
    np.savez(data, input=np.random.default_rng(1).standard_normal((320, 3, 64, 64)).astype(np.float32))
    result = analyze(AnalyzeRequest(model=model, out_dir=tmp_path / "out", calib=str(data), progress=False))
    assert len(result.sensitivity.nodes) >= 25
    assert result.ratio < 3.0, result.timings
