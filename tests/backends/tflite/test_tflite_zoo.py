"""Zoo models through ``build(--target tflite)`` (slow): they run in LiteRT, CNNs at SQNR ≥ 30 dB.

Calibrated on random normal inputs (the zoo has random weights too); 64 calibration samples.
"""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
from _qdq import parse

from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build

log = logging.getLogger(__name__)
CNNS = ("resnet18_like", "mobilenetv2_like", "efficientnet_like")
TRANSFORMERS = ("tiny_transformer", "small_transformer")


def _build(name: str, tmp_path: Path) -> dict:
    pytest.importorskip("torch")
    from dsqc.models.export import export_onnx
    from dsqc.models.zoo import ZOO

    module, example = ZOO[name]()
    path = export_onnx(module, example, tmp_path / f"{name}.onnx", input_names=["x"], output_names=["y"])
    shape = tuple(example.shape[1:])
    calib = np.random.default_rng(0).standard_normal((80, *shape)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=calib)
    result = build(BuildRequest(model=path, target="tflite", out_dir=tmp_path / "out",
                                calib=str(tmp_path / "calib.npz"), calib_samples=64, eval_samples=16,
                                measure_latency=False))
    parse((tmp_path / "out" / f"{name}.int8.tflite").read_bytes())
    tflite = result.metrics["tflite"]
    log.info("%s: %s", name, {k: tflite[k] for k in ("verification", "latency_ms") if k in tflite})
    return tflite


@pytest.mark.slow
@pytest.mark.parametrize("name", CNNS)
def test_cnn_sqnr(name: str, tmp_path: Path) -> None:
    tflite = _build(name, tmp_path)
    assert tflite["verification"]["min_sqnr_db"] >= 30
    assert tflite["int8"]["interior_transposes"] == []
    # ±1 LSB kernel rounding at the first differing tensor, propagated: outputs within 2 LSB of ORT's QDQ
    assert all(v["max_lsb"] <= 2 for v in tflite["verification"]["vs_qdq"].values())
    first = tflite["verification"]["tensors"]["vs_ort_qdq"]["first_off"]
    assert first is None or first["max_lsb"] <= 1


@pytest.mark.slow
@pytest.mark.parametrize("name", TRANSFORMERS)
def test_transformer_runs(name: str, tmp_path: Path) -> None:
    tflite = _build(name, tmp_path)
    assert tflite["verification"]["min_sqnr_db"] >= 15
    assert "GELU" in tflite["int8"]["ops"] and "BATCH_MATMUL" in tflite["int8"]["ops"]
