"""Learned rounding through ``build``: the ``hls`` and ``tflite`` targets lower an AdaRound model bit-exact
against dsqc's integer reference, and the ``trt`` rules still hold."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from _rounding_models import cnn, cnn_samples, save

from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build

RECIPE = "[quantization]\nweight_limit = 7\n\n[boosters]\nadaround = true\nadaround_iterations = 60\n"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, Path]:
    folder = tmp_path_factory.mktemp("rounding")
    np.savez(folder / "calib.npz", **cnn_samples(80, seed=1).feeds)
    (folder / "recipe.toml").write_text(RECIPE)
    return save(cnn(), folder / "cnn.onnx"), folder / "calib.npz", folder / "recipe.toml"


def _build(inputs: tuple[Path, Path, Path], target: str, out: Path, **extra: object) -> dict:
    model, calib, recipe = inputs
    result = build(BuildRequest(model=model, target=target, out_dir=out, calib=str(calib), recipe=recipe,
                                eval_samples=16, measure_latency=False, **extra))
    assert "learned rounding" in result.timings
    return result.metrics


@pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make")), reason="gcc/make missing")
def test_hls_bit_exact(inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    metrics = _build(inputs, "hls", tmp_path / "hls", backend_options={"tb_vectors": 4})
    assert metrics["hls"]["csim"]["status"] == "bit-exact"


def test_tflite_bit_exact(inputs: tuple[Path, Path, Path], tmp_path: Path) -> None:
    tensors = _build(inputs, "tflite", tmp_path / "tfl")["tflite"]["verification"]["tensors"]
    assert tensors["vs_integer_reference"]["max_lsb"] == 0
    assert tensors["vs_ort_qdq"]["max_lsb"] <= 1


def test_trt_gptq_with_shifted_inputs(tmp_path: Path) -> None:
    """trt centres the one-signed Relu output feeding mm2 (shift booster): GPTQ fits the unshifted input
    and refolds the shift's bias, so the build gains as on the onnx target and keeps TensorRT's rules."""
    from _rounding_models import mlp, mlp_samples

    from dsqc.backends.trt import check_trt

    model = save(mlp(), tmp_path / "mlp.onnx")
    np.savez(tmp_path / "calib.npz", **mlp_samples(120, seed=1).feeds)
    sqnr = {}
    for label, boosters in (("nearest", ""), ("gptq", "[boosters]\ngptq = true\n")):
        recipe = tmp_path / f"{label}.toml"
        recipe.write_text(f"[quantization]\nweight_dtype = \"int4\"\nblock_size = 16\n{boosters}")
        out = tmp_path / label
        result = build(BuildRequest(model=model, target="trt", out_dir=out, calib=str(tmp_path / "calib.npz"),
                                    recipe=recipe, eval_samples=24, measure_latency=False))
        sqnr[label] = result.metrics["verification"]["min_sqnr_db"]
        assert not [f for f in check_trt(onnx.load(out / "mlp.trt.onnx")) if f.severity == "error"]
    assert sqnr["gptq"] > sqnr["nearest"] + 2.0, sqnr
    assert "dsqc.shift_bias.rounding" in {p.key for p in onnx.load(out / "mlp.trt.onnx").metadata_props}
