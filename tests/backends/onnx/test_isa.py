"""``-B isa``: the onnx target's weight bits follow the CPU that will run the model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from dsqc.backends.onnx.avx2_pairs import CANDIDATES
from dsqc.backends.onnx.isa import host_isa, resolve_isa
from dsqc.backends.registry import get_backend
from dsqc.driver.cli import main
from dsqc.errors import RecipeError
from tests.sensitivity._models import save_cnn


def test_host_isa_reads_the_cpu_flags(tmp_path: Path) -> None:
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu sse avx2 fma\n")
    assert host_isa(cpuinfo, "x86_64") == "avx2"
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_vnni\n")
    assert host_isa(cpuinfo, "x86_64") == "vnni"
    cpuinfo.write_text("flags\t\t: avx2 avx_vnni\n")
    assert host_isa(cpuinfo, "x86_64") == "vnni"
    assert host_isa(tmp_path / "missing", "x86_64") == "avx2", "unknown x86 takes the safe 7 bits"
    assert host_isa(cpuinfo, "aarch64") == "arm64"


def test_profile_and_bad_values() -> None:
    backend = get_backend("onnx")
    assert backend.profile_for({"isa": "avx2"}).weight_limit == 64
    assert backend.profile_for({"isa": "vnni"}).weight_limit == 127
    assert backend.profile_for({"isa": "arm64"}).weight_limit == 127
    assert resolve_isa(None)[1] == "detected on the build machine"
    with pytest.raises(RecipeError, match="onnx: -B isa='sse2'; choose one of avx2, vnni, arm64"):
        backend.profile_for({"isa": "sse2"})
    unknown = (r"onnx: unknown target option 'parallelism' \(-B parallelism=…\); options of onnx: "
               r"dynamic_kernel, isa")
    with pytest.raises(RecipeError, match=unknown):
        backend.profile_for({"parallelism": 8})


@pytest.mark.parametrize(("isa", "bits"), [("avx2", 7), ("vnni", 8)])
def test_build_stores_weights_in_the_isa_range(tmp_path: Path, capsys: pytest.CaptureFixture[str],
                                               isa: str, bits: int) -> None:
    """vnni: every channel 8-bit. avx2: 7-bit, each channel widened (``weight_limits``) only to a limit
    of ``avx2_pairs.CANDIDATES``; the report counts the channels in 8 and in 7 bits."""
    model, data = save_cnn(tmp_path)
    out = tmp_path / isa
    assert main(["build", str(model), "-t", "onnx", "--calib", str(data), "-o", str(out), "--no-latency",
                 "-B", f"isa={isa}"]) == 0
    qdq = onnx.load(str(out / "outlier_cnn.int8.onnx"))
    weights = [numpy_helper.to_array(t) for t in qdq.graph.initializer if t.data_type == onnx.TensorProto.INT8
               and t.dims and len(t.dims) == 4]
    per_channel = np.concatenate([np.abs(w.astype(np.int64)).reshape(len(w), -1).max(axis=1)
                                  for w in weights])
    report = json.loads((out / "report.json").read_text())
    metrics = report["metrics"]["onnx"]
    assert {k: metrics[k] for k in ("isa", "isa_source", "weight_bits")} == \
        {"isa": isa, "isa_source": "-B isa", "weight_bits": bits}
    if isa == "vnni":
        assert set(per_channel.tolist()) == {127} and "weight_channels" not in metrics
        assert "int8 weights in 8 bits for isa=vnni (-B isa" in capsys.readouterr().out
        return
    assert set(per_channel.tolist()) <= set(CANDIDATES), "a channel's largest weight is its limit"
    assert per_channel.max() == 127
    channels = metrics["weight_channels"]
    gemm = 10  # the classifier's output channels, beside the three Convs'
    assert channels["total"] == per_channel.size + gemm
    assert channels["8"] >= int(np.sum(per_channel == 127))
    assert channels["7"] >= int(np.sum(per_channel == 64))
    assert (f"int8 weights per channel from 7 to 8 bits, as far as ORT's int16 pair sums cannot saturate "
            f"({channels['8']} of {channels['total']} channels in 8 bits, {channels['7']} in 7) for isa=avx2"
            ) in capsys.readouterr().out
    html = (out / "report.html").read_text()
    assert f"{channels['8']} of {channels['total']} weight channels use 8 bits" in html and "isa=vnni" in html


def test_a_recipe_weight_limit_is_not_widened(tmp_path: Path) -> None:
    model, data = save_cnn(tmp_path)
    recipe = tmp_path / "r.toml"
    recipe.write_text("[quantization]\nweight_limit = 64\n")
    out = tmp_path / "o"
    assert main(["build", str(model), "-t", "onnx", "--calib", str(data), "-o", str(out), "--no-latency",
                 "-B", "isa=avx2", "--recipe", str(recipe)]) == 0
    qdq = onnx.load(str(out / "outlier_cnn.int8.onnx"))
    weights = [numpy_helper.to_array(t) for t in qdq.graph.initializer if t.data_type == onnx.TensorProto.INT8
               and t.dims and len(t.dims) == 4]
    assert max(int(np.abs(w).max()) for w in weights) == 64
    channels = json.loads((out / "report.json").read_text())["metrics"]["onnx"]["weight_channels"]
    assert channels["8"] == 0 and channels["7"] == channels["total"] > 0


def test_written_onnx_carries_no_shape_annotations(tmp_path: Path) -> None:
    """value_info lets ORT fuse SkipLayerNormalization, a slow kernel here (backend.without_value_info)."""
    from dsqc.driver.build_types import BuildRequest
    from dsqc.driver.pipeline import build

    mnist = Path(__file__).parents[3] / "models" / "mnist_cnn.onnx"
    result = build(BuildRequest(model=mnist, target="onnx", out_dir=tmp_path / "o", calib="mnist",
                                calib_samples=16, eval_samples=8, measure_latency=False))
    written = onnx.load(str(tmp_path / "o" / result.artifacts[0]))
    assert written.graph.node and not written.graph.value_info
    assert result.metrics["verification"]["min_sqnr_db"] > 25
