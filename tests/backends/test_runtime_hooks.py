"""The runtime hooks a bundle is re-checked through (``artifact_suffixes``/``runtime_artifact``,
``run_artifact`` on a ``WrittenBuild`` read back from a bundle, ``self_check``): a target defined in
this file gets check vectors and a ``dsqc verify`` re-run with no edit in the core."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import dsqc.backends.registry as registry
from dsqc.backends.registry import (
    Backend,
    BackendOutput,
    Feeds,
    Lowered,
    LoweringJob,
    WrittenBuild,
    get_backend,
    ort_outputs,
    register,
)
from dsqc.driver.check_vectors import bundle_build
from dsqc.driver.cli import main
from dsqc.model_io import save_model
from dsqc.quant.profile import TargetProfile

TOY_ORT = TargetProfile(name="toyort", activation_dtype="int8", symmetric_activations=True,
                        compute_ops=frozenset({"Gemm", "Conv"}), quantize_outputs=False, verify_fused=False,
                        int4_weights=False)


class ToyOrtBackend(Backend):
    """Writes the QDQ model as ``<name>.toyort.onnx`` and runs it in ONNX Runtime."""

    name = "toyort"
    description = "the QDQ model under another name"
    profile = TOY_ORT
    runtime_name = "ONNX Runtime (toy)"
    artifact_suffixes = (".toyort.onnx",)

    def lower(self, job: LoweringJob) -> Lowered:
        return Lowered(job)

    def write(self, lowered: Lowered, out: Path) -> BackendOutput:
        path = Path(f"{lowered.job.name}.toyort.onnx")
        save_model(self.verified_model(lowered), out / path)
        return BackendOutput([path])

    def run_artifact(self, build: WrittenBuild, feeds: list[Feeds]) -> dict[str, np.ndarray]:
        return ort_outputs(self, build, feeds)


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> type[ToyOrtBackend]:
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    return register(ToyOrtBackend)


def test_runtime_artifact_prefers_the_first_suffix() -> None:
    files = [Path("m.fp32.tflite"), Path("m.int8.tflite"), Path("report.json")]
    assert get_backend("tflite").runtime_artifact(files) == Path("m.int8.tflite")
    assert get_backend("onnx").runtime_artifact([Path("m.fp32.onnx")]) == Path("m.fp32.onnx")
    trt = [Path("m.fp32.onnx"), Path("m.trt.onnx")]
    assert get_backend("trt").runtime_artifact(trt) == Path("m.trt.onnx")
    assert get_backend("hls").runtime_artifact([Path("hls/tb/testbench.c")]) is None
    assert get_backend("hls").self_checking is not None


def test_a_new_target_gets_check_vectors_and_a_verify_rerun(toy: type[ToyOrtBackend], conv_bn_path: Path,
                                                             conv_bn_npz: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert main(["-q", "build", str(conv_bn_path), "--target", "toyort", "--calib", str(conv_bn_npz),
                 "--no-latency", "-o", str(out)]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    section = manifest["metrics"]["check_vectors"]
    assert section["artifact"] == "conv_bn.toyort.onnx" and section["runtime"] == "ONNX Runtime (toy)"
    assert (out / "check" / "output_0.npy").is_file()
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert "re-run conv_bn.toyort.onnx in ONNX Runtime (toy): ok — bit-exact" in capsys.readouterr().out
    # read back from the bundle alone: the recorded artifact and the names of the recorded vectors
    build = bundle_build(out, manifest, section)
    assert build.inputs == ["input"] and build.outputs == ["logits"] and build.plan is None
    got = ToyOrtBackend().run_artifact(build, [{"input": np.load(out / "check" / "input_0.npy")}])
    np.testing.assert_array_equal(got["logits"], np.load(out / "check" / "output_0.npy"))


def test_tflite_rerun_from_a_bundle_finds_an_nhwc_input(conv_bn_path: Path, conv_bn_npz: Path, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    """The bundle keeps no -B options: the re-run reads the layout off the file's input shape."""
    out = tmp_path / "out"
    assert main(["-q", "build", str(conv_bn_path), "--target", "tflite", "--calib", str(conv_bn_npz),
                 "--no-latency", "-B", "input_layout=nhwc", "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert "LiteRT interpreter (XNNPACK): ok — bit-exact" in capsys.readouterr().out
