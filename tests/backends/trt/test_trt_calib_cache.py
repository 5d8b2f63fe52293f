"""Calibration cache format: header digits, hex encoding, round trip, and reading QDQ scales."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import pytest
from trt_models import qdq_conv

from dsqc.backends.trt.calib_cache import (
    activation_scales,
    cache_header,
    format_cache,
    parse_cache,
    read_cache,
    scale_hex,
    version_digits,
    write_cache,
)
from dsqc.errors import RecipeError, UnsupportedError


@pytest.mark.parametrize(("version", "digits"), [
    ("10.3.0", "100300"), ("10.16", "101600"), ("8.6.1", "8601"), ("8.5.2.2", "8502"), ("7.2.2", "7202"),
    ("100300", "100300"),
])
def test_version_digits_follow_nv_tensorrt_version(version: str, digits: str) -> None:
    assert version_digits(version) == digits


def test_bad_version_is_a_recipe_error() -> None:
    with pytest.raises(RecipeError):
        version_digits("ten")
    with pytest.raises(RecipeError):
        version_digits("10.100.0")


def test_header_and_the_example_from_facts() -> None:
    assert cache_header("8.6.1") == "TRT-8601-EntropyCalibration2"
    assert scale_hex(np.float32(struct.unpack("!f", bytes.fromhex("3c008912"))[0])) == "3c008912"
    assert abs(struct.unpack("!f", bytes.fromhex("3c008912"))[0] - 0.0078452) < 1e-7


def test_round_trip_is_bit_exact(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    scales = {f"/layer{i}/Conv_output_0": np.float32(s) for i, s in enumerate(rng.uniform(1e-6, 10, 200))}
    scales["tiny"] = np.float32(1e-30)  # leading zero nibbles must stay: 8 hex digits, always
    path = tmp_path / "calibration.cache"
    write_cache(path, scales, "10.3.0")
    text = path.read_text()
    assert text.endswith("\n") and not text.endswith("\n\n")
    lines = text.splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert all(len(line.rpartition(": ")[2]) == 8 for line in lines[1:])
    back = read_cache(path)
    assert list(back.scales) == list(scales)
    for name, scale in scales.items():
        assert back.scales[name].tobytes() == scale.tobytes()


def test_names_are_split_at_the_last_colon_like_tensorrt() -> None:
    text = format_cache({"input:0": 0.5}, "TRT-8601-EntropyCalibration2")
    assert text.splitlines()[1] == "input:0: 3f000000"
    assert parse_cache(text).scales == {"input:0": np.float32(0.5)}


@pytest.mark.parametrize(("scales", "message"), [
    ({"a\nb": 0.1}, "line break"), ({"a": -0.1}, "positive"), ({"a": float("inf")}, "positive"),
])
def test_unwritable_entries_are_refused(scales: dict[str, float], message: str) -> None:
    with pytest.raises(UnsupportedError, match=message):
        format_cache(scales, "TRT-100300-EntropyCalibration2")


def test_garbage_is_refused() -> None:
    with pytest.raises(UnsupportedError, match="first line"):
        parse_cache("data: 3c008912\n")
    with pytest.raises(UnsupportedError, match="line 2"):
        parse_cache("TRT-8601-EntropyCalibration2\ndata 3c008912\n")


def test_activation_scales_skip_weights_and_non_int8() -> None:
    scales, notes = activation_scales(qdq_conv(relu_after_q=True))
    assert scales == {"x": np.float32(0.02), "c": np.float32(0.02)}
    assert notes == []
    scales, notes = activation_scales(qdq_conv(zero_point=5))
    assert scales == {} and "not symmetric int8" in notes[0]


def test_renamed_graph_output_maps_back_to_the_fp32_name() -> None:
    model = qdq_conv(relu_after_q=True)
    for node in model.graph.node:
        node.input[:] = ["c_float" if i == "c" else i for i in node.input]
        node.output[:] = ["c_float" if o == "c" else o for o in node.output]
        node.output[:] = ["c" if o == "cd" else o for o in node.output]
        node.input[:] = ["c" if i == "cd" else i for i in node.input]
    model.graph.output[0].name = "c"
    scales, _ = activation_scales(model, fp32_names={"x", "c", "r"})
    assert set(scales) == {"x", "c"}
