"""The ``hls`` backend: the C project, its knobs, and `make csim` bit-exact against the reference."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from _hls_helpers import emit
from _integer_models import case

from dsqc.backends.registry import LoweringJob, available, get_backend
from dsqc.errors import RecipeError, UnsupportedError

needs_gcc = pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")),
                               reason="gcc/make/nm not installed")

FILES = {"Makefile", "README.md", "build.tcl", "tb/testbench.c", "firmware/weights.h",
         "firmware/weights_0.c"}


def test_registered() -> None:
    assert "hls" in available()
    assert get_backend("hls").profile.activation_dtype == "int8"


@needs_gcc
@pytest.mark.parametrize("name", ["mnist", "resnet", "mobilenet"])
def test_csim_bit_exact(tmp_path: Path, name: str) -> None:
    result = emit(case(name), tmp_path)
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact"
    assert hls["csim"]["vectors"] == 16 and hls["csim"]["mismatching_values"] == 0
    assert hls["csim"]["forbidden_symbols"] == [] and hls["csim"]["stack_frames_static_only"]
    top = hls["top"]
    assert {str(p) for p in result.artifacts} == {f"hls/{f}" for f in
                                                  FILES | {f"firmware/{top}.c", f"firmware/{top}.h"}}
    assert hls["lsb_vs_ort"]["float_requant"]["max_lsb"] <= 3
    readme = (tmp_path / "hls" / "README.md").read_text()
    for needle in ("MACs per inference", "weight bytes", "largest", "latency at parallelism",
                   "0 mismatching"):
        assert needle in readme


def test_mnist_estimates(tmp_path: Path) -> None:
    est = emit(case("mnist"), tmp_path, csim=False, parallelism=8)
    numbers = est.metrics["hls"]["estimates"]
    assert numbers["macs"] == 1_568_640
    assert numbers["largest_buffer"] == {"tensor": "/2/Relu_output_0", "bytes": 16 * 28 * 28}
    assert numbers["weight_bytes"] > 100_000 and numbers["cycles"] < 1_568_640 / 8 + 40_000


def test_parallelism_drives_pragmas(tmp_path: Path) -> None:
    emit(case("resnet"), tmp_path / "p1", csim=False)
    emit(case("resnet"), tmp_path / "p4", csim=False, parallelism=4)
    one = (tmp_path / "p1/hls/firmware/resnet.c").read_text()
    four = (tmp_path / "p4/hls/firmware/resnet.c").read_text()
    assert "UNROLL" not in one and "ARRAY_PARTITION" not in one and "PIPELINE II=1" in one
    assert "#pragma HLS UNROLL factor=4" in four
    assert "#pragma HLS ARRAY_PARTITION variable=layer0_stem_w cyclic factor=4 dim=1" in four
    assert "#pragma HLS INTERFACE m_axi port=in_input" in four


@needs_gcc
def test_axis_interface_and_pow2_shift_only(tmp_path: Path) -> None:
    c = case("mobilenet", pow2=True)
    result = emit(c, tmp_path, interface="axis", parallelism=2, power_of_two_scales=True)
    source = (tmp_path / "hls/firmware/mobilenet.c").read_text()
    assert "#pragma HLS INTERFACE axis port=in_input" in source and "m_axi" not in source
    assert source.count("dsqc_requant(") <= 2  # GlobalAveragePool 1/49 keeps a multiplier
    assert result.metrics["hls"]["csim"]["status"] == "bit-exact"
    assert result.metrics["hls"]["lsb_vs_ort"]["float_requant"]["max_lsb"] == 0


@needs_gcc
def test_pow2_option_snaps_a_plain_plan(tmp_path: Path) -> None:
    result = emit(case("resnet"), tmp_path, power_of_two_scales=True)
    assert any("powers of two" in note for note in result.notes)
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["lsb_vs_ort"]["float_requant"]["max_lsb"] == 0
    assert "dsqc_requant(" not in (tmp_path / "hls/firmware/resnet.c").read_text().split("void resnet(")[0] \
        .replace("static int8_t dsqc_requant(", "")


def test_same_inputs_same_bytes(tmp_path: Path) -> None:
    emit(case("mobilenet"), tmp_path / "a", csim=False)
    emit(case("mobilenet"), tmp_path / "b", csim=False)
    for path in sorted((tmp_path / "a").rglob("*")):
        if path.is_file():
            assert path.read_bytes() == (tmp_path / "b" / path.relative_to(tmp_path / "a")).read_bytes()


@pytest.mark.parametrize("options", [{"interface": "pcie"}, {"parallelism": 0}, {"part": "x; exec rm"},
                                     {"clock_mhz": -1}, {"unroll": 2}, {"csim": "no"}])
def test_bad_options(tmp_path: Path, options: dict) -> None:
    with pytest.raises(RecipeError):
        emit(case("resnet"), tmp_path, **options)


def test_fp32_build_is_unsupported(tmp_path: Path) -> None:
    c = case("resnet")
    job = LoweringJob("resnet", c.fp32, None, None, [], {})
    with pytest.raises(UnsupportedError, match="int8"):
        get_backend("hls").emit(job, tmp_path)


def test_no_eval_data_uses_random_vectors(tmp_path: Path) -> None:
    c = case("resnet")
    job = LoweringJob("resnet", c.fp32, c.qdq, c.plan, [], {"csim": False, "tb_vectors": 3})
    result = get_backend("hls").emit(job, tmp_path)
    assert any("random" in note for note in result.notes)
    assert "#define N_VECTORS 3" in (tmp_path / "hls/tb/testbench.c").read_text()
