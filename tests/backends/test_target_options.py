"""One ``-B`` option parser for every target: unknown keys are one line naming the key and listing the
target's known keys; strings from the command line become the field's type (issue 12, item 6)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from dsqc.backends.registry import available, get_backend
from dsqc.errors import RecipeError

KNOWN = {"onnx": ["dynamic_kernel", "isa"], "trt": ["fp16", "require_engine", "trt_version", "workspace_mib"],
         "tflite": ["input_layout", "io", "latency", "signature", "verify", "write_fp32"],
         "hls": ["activation_bits", "clock_mhz", "csim", "interface", "parallelism", "part",
                 "power_of_two_scales", "residual_bits", "tb_vectors"]}


@pytest.mark.parametrize("target", available())
def test_every_target_rejects_keys_it_does_not_know(target: str) -> None:
    with pytest.raises(RecipeError) as info:
        get_backend(target).parse_options({"colour": "blue"})
    message = str(info.value)
    assert message.startswith(f"{target}: unknown target option 'colour' (-B colour=…); "
                              f"options of {target}: ")
    assert message.endswith(", ".join(KNOWN[target]) or "none")


def test_strings_become_typed_values() -> None:
    typed = get_backend("hls").parse_options({"parallelism": "8", "clock_mhz": "250", "csim": "false"})
    assert typed == {"parallelism": 8, "clock_mhz": 250, "csim": False}
    assert get_backend("trt").parse_options({"trt_version": "100300"}) == {"trt_version": "100300"}
    assert get_backend("tflite").parse_options({"io": "int8"}) == {"io": "int8"}
    with pytest.raises(RecipeError, match="tflite: -B io='int4'; choose one of float, int8"):
        get_backend("tflite").parse_options({"io": "int4"})
    with pytest.raises(RecipeError, match="hls: -B parallelism must be an integer, got 'many'"):
        get_backend("hls").parse_options({"parallelism": "many"})
    with pytest.raises(RecipeError, match=r"hls: parallelism must be an integer in 1\.\.4096"):
        get_backend("hls").parse_options({"parallelism": "0"})
    with pytest.raises(RecipeError, match="hls: activation_bits must be 8 or 16, got 12"):
        get_backend("hls").parse_options({"activation_bits": "12"})
    with pytest.raises(RecipeError, match="hls: residual_bits must be 8 or 16, got 4"):
        get_backend("hls").parse_options({"residual_bits": "4"})


def test_onnx_build_rejects_an_hls_option_before_any_work(conv_bn_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "dsqc", "build", str(conv_bn_path), "--target", "onnx",
                           "--calib", "random", "-B", "parallelism=8", "-o", str(out)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "dsqc: error: onnx: unknown target option 'parallelism' (-B parallelism=…); options of onnx: "
        "dynamic_kernel, isa"]
    assert not out.exists()
