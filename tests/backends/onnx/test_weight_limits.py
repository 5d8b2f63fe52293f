"""``weight_limits``: the avx2 profile's per-channel widening, read once per model and sample set."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dsqc.backends.onnx import weight_limits
from dsqc.backends.onnx.profile import onnx_profile
from dsqc.calibration.data import SampleSet
from dsqc.quant.quantize import quantize_model
from dsqc.quant.recipe import Recipe
from tests.sensitivity._models import outlier_cnn


def _weights(model: onnx.ModelProto) -> list[np.ndarray]:
    return [numpy_helper.to_array(t) for t in model.graph.initializer
            if t.data_type == onnx.TensorProto.INT8 and len(t.dims) == 4]


def test_every_plan_of_one_model_reads_the_samples_once(monkeypatch: pytest.MonkeyPatch) -> None:
    streams: list[list[str]] = []
    real = weight_limits.stream_tensors

    def counted(proto: onnx.ModelProto, names: list[str], *args: Any) -> Iterator[dict[str, np.ndarray]]:
        streams.append(names)
        return real(proto, names, *args)

    monkeypatch.setattr(weight_limits, "stream_tensors", counted)
    fp32 = outlier_cnn()
    samples = SampleSet({"input": np.random.default_rng(0).normal(size=(12, 3, 16, 16)).astype(np.float32)},
                        "test samples")
    profile = onnx_profile("avx2")
    first = quantize_model(fp32, profile, Recipe(), samples)
    again = quantize_model(fp32, profile, Recipe(method="percentile"), samples)  # other input grids
    assert len(streams) == 1 and streams[0], "the input ranges are read once"
    for quantized in (first, again):
        limits = [int(np.abs(w).max()) for w in _weights(quantized.model)]
        assert max(limits) > 64 and all(64 <= limit <= 127 for limit in limits)
    quantize_model(fp32, profile, Recipe(), samples.take(6))  # another sample set: read again
    assert len(streams) == 2
