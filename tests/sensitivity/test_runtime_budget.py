"""A mixed-precision build for ``tflite`` meets its budget in LiteRT, not only in ORT's reference."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from dsqc.backends.tflite.backend import TfliteBackend
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.verify import Feeds, run_batches, session
from tests.sensitivity._models import save_cnn

BUDGET = 45.0  # dB: plain int8 measures 38.2 on this CNN (bias correction off), one float node 45.2


@pytest.fixture(scope="module")
def cnn(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("cnn")
    model, data = save_cnn(folder)
    recipe = folder / "no_bc.toml"  # bias correction would cancel most of the planted outlier's damage
    recipe.write_text("[boosters]\nbias_correction = false\n")
    return model, data, recipe


def _mixed(out: Path) -> dict[str, Any]:
    return json.loads((out / "report.json").read_text())["metrics"]


def test_budget_is_judged_in_litert_too(cnn: tuple[Path, Path, Path], tmp_path: Path) -> None:
    """The search's rounds and the final judgement carry LiteRT's own number, the one the verdict reads."""
    model, data, recipe = cnn
    out = tmp_path / "out"
    result = build(BuildRequest(model=model, target="tflite", out_dir=out, calib=str(data), recipe=recipe,
                                measure_latency=False, accuracy_budget=f"sqnr:{BUDGET:g}"))
    assert result.failed is None
    metrics = _mixed(out)
    accuracy = metrics["mixed_precision"]["accuracy"]
    litert = metrics["tflite"]["verification"]["min_sqnr_db"]  # the lowering's own LiteRT run
    assert accuracy["in_runtime"] == pytest.approx(litert, abs=1e-6)
    assert accuracy["reference_semantics"] == pytest.approx(metrics["verification"]["min_sqnr_db"])
    assert accuracy["achieved"] == min(accuracy["reference_semantics"], accuracy["in_runtime"])
    assert accuracy["met"] and accuracy["achieved"] >= BUDGET
    rounds = metrics["mixed_precision"]["search"]["rounds"]
    assert all(r["achieved_in_runtime"] is not None for r in rounds)


def test_a_runtime_under_the_reference_makes_the_search_go_further(
        cnn: tuple[Path, Path, Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A runtime 4 dB noisier than ORT's reference (LiteRT's error vs FP32 scaled by 1.6) misses the
    budget with the plan that meets it in ORT; the search runs again with that shortfall as margin and
    keeps a plan that meets the budget in the runtime."""
    model, data, recipe = cnn
    fp32 = session(onnx.load(model))
    real = TfliteBackend.runtime_outputs

    def noisier(self: TfliteBackend, qdq: onnx.ModelProto, options: dict[str, Any],
                feeds: list[Feeds]) -> dict[str, np.ndarray] | None:
        got = real(self, qdq, options, feeds)
        assert got is not None
        ref = run_batches(fp32, feeds)
        return {name: ref[name] + 1.6 * (got[name].reshape(ref[name].shape) - ref[name]) for name in got}

    monkeypatch.setattr(TfliteBackend, "runtime_outputs", noisier)
    out = tmp_path / "out"
    result = build(BuildRequest(model=model, target="tflite", out_dir=out, calib=str(data), recipe=recipe,
                                measure_latency=False, accuracy_budget=f"sqnr:{BUDGET:g}"))
    assert result.failed is None
    mp = _mixed(out)["mixed_precision"]
    first, *later = mp["search"]["rounds"]
    assert first["predicted_or_measured_reference"] >= BUDGET > first["achieved_in_runtime"], first
    assert first["achieved"] == first["achieved_in_runtime"]
    assert later and later[0]["margin"] >= BUDGET - first["achieved_in_runtime"], later
    assert mp["accuracy"]["in_runtime"] >= BUDGET and mp["met"], mp["accuracy"]
    assert mp["above_int8"] > 1  # more than the one node that met the budget in ORT
