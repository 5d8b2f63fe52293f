"""``dsqc.driver.pipeline.build(target="trt")`` end to end: artifacts, cache = Q/DQ scales bit for bit, ORT
accuracy against FP32 and against the ``onnx`` target, the no-TensorRT path and ``require_engine``."""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper
from trt_models import attention_block, residual_cnn, save_with_calib

from dsqc.backends.trt import check_trt
from dsqc.backends.trt.engine import tensorrt_status
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.pipeline import build
from dsqc.errors import GateError, RecipeError
from dsqc.metrics import sqnr_db
from dsqc.verify import session

MODELS = {"residual_cnn": residual_cnn, "attention": attention_block}
Builds = dict[tuple[str, str], BuildResult]


def _build(folder: Path, name: str, target: str, **options: Any) -> BuildResult:
    model, npz = folder / f"{name}.onnx", folder / f"{name}_calib.npz"
    if not model.exists():
        save_with_calib(MODELS[name](), folder, name)
    out = folder / f"{name}_{target}{'_' + '_'.join(options) if options else ''}"
    return build(BuildRequest(model=model, target=target, out_dir=out, calib=str(npz), method="minmax",
                              measure_latency=False, backend_options=options))


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("trt_build")


@pytest.fixture(scope="module")
def builds(work: Path) -> dict[tuple[str, str], BuildResult]:
    return {(name, target): _build(work, name, target) for name in MODELS for target in ("trt", "onnx")}


def modelopt_read(path: Path) -> dict[str, float]:
    """NVIDIA ModelOpt's reading rule: skip the header, split at ': ', struct.unpack('!f', bytes.fromhex)."""
    scales = {}
    for i, line in enumerate(path.read_text().splitlines(keepends=True)):
        if i > 0:
            name, hex_value = line.replace("\n", "").split(": ")
            scales[name] = struct.unpack("!f", bytes.fromhex(hex_value))[0]
    return scales


@pytest.mark.parametrize("name", sorted(MODELS))
def test_bundle_files(builds: Builds, name: str) -> None:
    result = builds[(name, "trt")]
    expected = {f"{name}.trt.onnx", f"{name}.fp32.onnx", "calibration.cache", "build_engine.sh",
                "build_engine.py", "report.json"}
    assert {str(p) for p in result.artifacts} == expected
    assert {p.name for p in result.out_dir.iterdir()} == expected


@pytest.mark.parametrize("name", sorted(MODELS))
def test_cache_equals_qdq_scales_to_the_bit(builds: Builds, name: str) -> None:
    out = builds[(name, "trt")].out_dir
    qdq = onnx.load(str(out / f"{name}.trt.onnx"))
    inits = {t.name: numpy_helper.to_array(t) for t in qdq.graph.initializer}
    q_scales = {n.input[0]: inits[n.input[1]] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    cache = modelopt_read(out / "calibration.cache")
    assert (out / "calibration.cache").read_text().splitlines()[0] == "TRT-100300-EntropyCalibration2"
    assert set(cache) == set(q_scales) and cache
    for tensor, scale in q_scales.items():
        assert np.float32(cache[tensor]).tobytes() == np.float32(scale).tobytes(), tensor
    fp32_tensors = {o for n in onnx.load(str(out / f"{name}.fp32.onnx")).graph.node for o in n.output} | {"x"}
    assert set(cache) <= fp32_tensors  # names of the network the cache belongs to


@pytest.mark.parametrize("name", sorted(MODELS))
def test_trt_model_is_clean_and_accurate_in_ort(builds: Builds, name: str) -> None:
    result = builds[(name, "trt")]
    fp32 = onnx.load(str(result.out_dir / f"{name}.fp32.onnx"))
    trt = onnx.load(str(result.out_dir / f"{name}.trt.onnx"))
    assert check_trt(trt) == []
    dims = [d.dim_value for d in fp32.graph.input[0].type.tensor_type.shape.dim[1:]]
    feeds = {"x": np.random.default_rng(7).normal(0, 1, (8, *dims)).astype(np.float32)}
    ref = session(fp32).run(None, feeds)[0]
    got = session(trt, optimize=False).run(None, feeds)[0]
    assert sqnr_db(ref, got) > 30.0
    verified = result.metrics["verification"]["min_sqnr_db"]  # the build verifies the *.trt.onnx it wrote
    assert verified > 30.0
    onnx_target = builds[(name, "onnx")].metrics["verification"]["min_sqnr_db"]
    assert verified > onnx_target - 0.5  # symmetric int8 (with shifted one-signed inputs) costs little


def test_cnn_lowering_is_exact_and_keeps_the_residual_skip_quantized(
        builds: Builds) -> None:
    metrics = builds[("residual_cnn", "trt")].metrics["trt"]
    assert metrics["ort"]["max_abs_diff_vs_qdq"] == 0.0
    assert metrics["folded_bias_dequantize"] == 4 and metrics["float_readers_rewired"] == []
    trt = onnx.load(str(builds[("residual_cnn", "trt")].out_dir / "residual_cnn.trt.onnx"))
    add = next(n for n in trt.graph.node if n.op_type == "Add")
    producers = {o: n.op_type for n in trt.graph.node for o in n.output}
    assert sorted(producers[i] for i in add.input) == ["Conv", "DequantizeLinear"]
    quantized = [n.input[0] for n in trt.graph.node if n.op_type == "QuantizeLinear"]
    assert "Conv" not in {producers.get(t) for t in quantized}  # no Q/DQ on a Conv output


def test_attention_float_readers_read_float(builds: Builds) -> None:
    metrics = builds[("attention", "trt")].metrics["trt"]
    # 'residual' reads x, whose int8 copy is now the shifted x_shifted the projections read
    assert metrics["float_readers_rewired"] == ["residual2"]
    trt = onnx.load(str(builds[("attention", "trt")].out_dir / "attention.trt.onnx"))
    producers = {o: n.op_type for n in trt.graph.node for o in n.output}
    for node in trt.graph.node:
        if node.op_type in ("Softmax", "LayerNormalization", "Add"):
            assert all(producers.get(i) != "DequantizeLinear" for i in node.input), node.name


def test_no_tensorrt_note_and_require_engine(builds: Builds, work: Path) -> None:
    if tensorrt_status()[0]:
        pytest.skip("TensorRT is installed here")
    notes = [w for w in builds[("residual_cnn", "trt")].warnings if "engine" in w]
    assert len(notes) == 1 and "needs TensorRT" in notes[0] and "build_engine.sh" in notes[0]
    with pytest.raises(GateError) as err:
        _build(work, "residual_cnn", "trt", require_engine=True)
    assert err.value.exit_code == 2 and "needs TensorRT" in str(err.value)
    assert not (work / "residual_cnn_trt_require_engine").exists()


def test_fp16_islands(work: Path) -> None:
    result = _build(work, "attention", "trt", fp16=True)
    trt = onnx.load(str(result.out_dir / "attention.trt.onnx"))
    assert check_trt(trt) == []
    assert trt.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in trt.graph.initializer)
    metrics = result.metrics["trt"]
    assert metrics["fp16_conversion"]["scale_max_rel_change"] < 2 ** -11
    assert result.metrics["verification"]["min_sqnr_db"] > 30.0


def test_options_are_validated(work: Path) -> None:
    with pytest.raises(RecipeError, match="unknown target option 'fp17'"):
        _build(work, "residual_cnn", "trt", fp17=True)
    with pytest.raises(RecipeError, match="trt_version"):
        _build(work, "residual_cnn", "trt", trt_version="ten")


def test_same_inputs_same_bytes(builds: Builds, work: Path) -> None:
    again = _build(work, "residual_cnn", "trt", trt_version="10.3.0")
    first = builds[("residual_cnn", "trt")].out_dir
    for name in ("calibration.cache", "build_engine.sh", "build_engine.py", "residual_cnn.trt.onnx"):
        assert (again.out_dir / name).read_bytes() == (first / name).read_bytes(), name


def test_no_ort_latency_for_a_model_trt_runs(work: Path) -> None:
    """ORT's timing of the emulation model says nothing about TensorRT: the build does not report it."""
    from dsqc.driver.report import format_result

    model, npz = work / "residual_cnn.onnx", work / "residual_cnn_calib.npz"
    if not model.exists():
        save_with_calib(residual_cnn(), work, "residual_cnn")
    result = build(BuildRequest(model=model, target="trt", out_dir=work / "timed", calib=str(npz),
                                method="minmax", measure_latency=True))
    assert result.metrics["verification"]["latency_ms"] is None
    assert "latency" not in format_result(result)


def test_the_build_lowers_once(work: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Verification and the written ``*.trt.onnx`` share one lowering (issue 14, item 6)."""
    import dsqc.backends.trt.backend as trt_backend

    calls: list[str] = []
    real = trt_backend._lowered

    def counting(job: Any, opts: Any) -> Any:
        calls.append(job.name)
        return real(job, opts)

    monkeypatch.setattr(trt_backend, "_lowered", counting)
    result = _build(work, "residual_cnn", "trt", workspace_mib=64)
    assert calls == ["residual_cnn"]
    assert result.metrics["verification"]["min_sqnr_db"] > 30.0
