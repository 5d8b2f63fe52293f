"""``dsqc build --target hls`` end to end: calibrate, plan with the hls profile, lower, write, csim."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.models.mnist import DEMO_MODEL_PATH


@pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")), reason="gcc/make/nm missing")
def test_build_mnist_for_hls(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(BuildRequest(model=DEMO_MODEL_PATH, target="hls", out_dir=out, calib="mnist",
                                calib_samples=128, measure_latency=False,
                                backend_options={"parallelism": 4, "tb_vectors": 8}))
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["vectors"] == 8
    assert hls["lsb_vs_ort"]["float_requant"]["max_lsb"] <= 1
    assert (out / "hls" / "firmware" / "mnist_cnn.c").is_file()
    assert (out / "hls" / "README.md").read_text().count("parallelism 4") == 1
    assert result.plan is not None and all(
        spec.dtype in ("int8", "int32") for spec in result.plan.tensors.values())
