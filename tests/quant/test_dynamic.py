"""``--mode dynamic|auto`` (issue 16): int8 per-channel weights with activations quantized at run time,
run by ONNX Runtime (integer kernels) and LiteRT (hybrid kernels); trt/hls refuse; auto decides per node
from a measurement and records it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.backends.onnx.dynamic import KERNELS, lower_dynamic
from dsqc.calibration.data import SampleSet
from dsqc.driver.cli import main
from dsqc.errors import RecipeError
from dsqc.quant.dynamic import candidates, dynamic_nodes, insert_dynamic
from dsqc.quant.dynamic_auto import MARGIN_DB, choose_modes
from dsqc.quant.profile import TargetProfile
from dsqc.quant.quantize import quantize_model
from dsqc.quant.recipe import Recipe, parse_recipe
from dsqc.quant.spec import QuantPlan

MIN_SQNR_DB = 30.0  # int8 per-channel weights + run-time uint8 activations on this small net


def small_net(seed: int = 0) -> onnx.ModelProto:
    """Conv(3→8, 3×3) → Relu → Flatten → Gemm(512→32, transB) → Relu → MatMul(32→10) → Add(bias)."""
    rng = np.random.default_rng(seed)

    def he(*shape: int) -> np.ndarray:
        fan_in = int(np.prod(shape[1:])) if len(shape) == 4 else shape[-1 if len(shape) == 2 else 0]
        return (rng.standard_normal(shape) * np.sqrt(2.0 / fan_in)).astype(np.float32)

    inits = [numpy_helper.from_array(he(8, 3, 3, 3), "conv_w"),
             numpy_helper.from_array(rng.standard_normal(8).astype(np.float32) * 0.1, "conv_b"),
             numpy_helper.from_array(he(32, 512), "fc_w"),
             numpy_helper.from_array(rng.standard_normal(32).astype(np.float32) * 0.1, "fc_b"),
             numpy_helper.from_array((rng.standard_normal((32, 10)) * 0.25).astype(np.float32), "head_w"),
             numpy_helper.from_array(rng.standard_normal(10).astype(np.float32) * 0.1, "head_b")]
    nodes = [helper.make_node("Conv", ["x", "conv_w", "conv_b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="relu"),
             helper.make_node("Flatten", ["r"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["g"], name="fc", transB=1),
             helper.make_node("Relu", ["g"], ["gr"], name="relu2"),
             helper.make_node("MatMul", ["gr", "head_w"], ["m"], name="head"),
             helper.make_node("Add", ["m", "head_b"], ["y"], name="head_bias")]
    graph = helper.make_graph(nodes, "small_net",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 10])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


@pytest.fixture
def net(tmp_path: Path) -> Path:
    path = tmp_path / "net.onnx"
    onnx.save(small_net(), path)
    return path


def _npz(path: Path, n: int, seed: int, outliers: int = 0) -> Path:
    x = np.random.default_rng(seed).standard_normal((n, 3, 8, 8)).astype(np.float32)
    x[:outliers] *= 40.0  # a few calibration samples with a far wider range than the rest
    np.savez(path, x=x)
    return path


def _sqnr(ref: np.ndarray, got: np.ndarray) -> float:
    return float(10 * np.log10(np.sum(ref ** 2) / np.sum((ref - got) ** 2)))


def _run(model: onnx.ModelProto | Path, x: np.ndarray) -> np.ndarray:
    data = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    sess = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.concatenate([sess.run(None, {"x": x[i:i + 1]})[0] for i in range(len(x))])


def test_onnx_dynamic_build_runs_in_ort_within_sqnr(net: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["build", str(net), "--target", "onnx", "--mode", "dynamic", "--no-latency",
                 "--eval-data", str(_npz(tmp_path / "eval.npz", 16, 1)), "-o", str(out)]) == 0
    model = onnx.load(out / "net.int8.onnx")
    ops = {n.op_type for n in model.graph.node}
    assert {"DynamicQuantizeMatMul", "ConvInteger", "DynamicQuantizeLinear"} <= ops
    assert not ops & {"MatMul", "Gemm", "Conv", "QuantizeLinear"}
    x = np.random.default_rng(2).standard_normal((8, 3, 8, 8)).astype(np.float32)
    assert _sqnr(_run(net, x), _run(out / "net.int8.onnx", x)) > MIN_SQNR_DB
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["dynamic"]["verified"] and report["verdict"]["level"] == "ok"
    assert report["metrics"]["verification"]["outputs"]["y"]["sqnr_db"] > MIN_SQNR_DB
    assert set(report["metrics"]["dynamic"]["nodes"]) == {"conv", "fc", "head"}
    assert report["plan"]["nodes"]["fc"]["reason"].startswith("dynamic")
    assert report["plan"]["tensors"]["fc_w"]["axis"] == 0  # per output channel (Gemm transB)


def test_every_kernel_computes_the_canonical_model() -> None:
    fp32 = small_net()
    canonical = insert_dynamic(fp32, candidates(fp32), QuantPlan())
    assert set(dynamic_nodes(canonical)) == {"conv", "fc", "head"}
    x = np.random.default_rng(3).standard_normal((4, 3, 8, 8)).astype(np.float32)
    ref = _run(canonical, x)
    assert _sqnr(_run(fp32, x), ref) > MIN_SQNR_DB
    for kernel in KERNELS:
        lowered = lower_dynamic(canonical, kernel)
        onnx.checker.check_model(lowered)
        assert _sqnr(ref, _run(lowered, x)) > 45.0, kernel  # same arithmetic up to float rounding


def test_no_data_builds_unverified_and_says_so(net: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                               ) -> None:
    out = tmp_path / "out"
    assert main(["build", str(net), "--target", "onnx", "--mode", "dynamic", "-o", str(out)]) == 0
    captured = capsys.readouterr()
    assert "UNVERIFIED" in captured.out and "UNVERIFIED" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["verdict"]["level"] == "unverified" and "verification" not in report["metrics"]
    assert report["metrics"]["dynamic"]["verified"] is False
    assert main(["build", str(net), "--target", "onnx", "--mode", "dynamic", "--min-sqnr", "20",
                 "-o", str(tmp_path / "gated")]) == 2
    assert not (tmp_path / "gated").exists()


def test_tflite_dynamic_range_file_runs_in_litert(net: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    assert main(["build", str(net), "--target", "tflite", "--mode", "dynamic", "--no-latency",
                 "--eval-data", str(_npz(tmp_path / "eval.npz", 8, 1)), "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    litert = report["metrics"]["tflite"]["verification"]["outputs"]["y"]
    assert litert["sqnr_db"] > MIN_SQNR_DB  # LiteRT's run of the file against FP32
    # the canonical model quantizes the Conv input per image and the FC inputs per row, as the hybrid
    # kernels do: ORT's reference and LiteRT agree to float rounding
    assert report["metrics"]["tflite"]["verification"]["vs_qdq"]["y"]["sqnr_db"] > 100
    assert abs(report["metrics"]["verification"]["outputs"]["y"]["sqnr_db"] - litert["sqnr_db"]) < 0.01
    import tflite  # the independent reader: float activations, int8 per-channel weights, hybrid versions

    blob = (out / "net.int8.tflite").read_bytes()
    model = tflite.Model.GetRootAsModel(blob, 0)
    sub = model.Subgraphs(0)
    hybrid = []
    for i in range(sub.OperatorsLength()):
        op = sub.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        x, w = sub.Tensors(op.Inputs(0)), sub.Tensors(op.Inputs(1)) if op.InputsLength() > 1 else None
        if w is not None and w.Type() == tflite.TensorType.INT8 and x.Type() == tflite.TensorType.FLOAT32:
            hybrid.append((code.BuiltinCode(), code.Version(), w.Quantization().ScaleLength()))
    conv, fc = tflite.BuiltinOperator.CONV_2D, tflite.BuiltinOperator.FULLY_CONNECTED
    assert sorted(hybrid) == sorted([(conv, 5, 8), (fc, 12, 32), (fc, 12, 10)])
    assert not set(report["metrics"]["tflite"]["int8"]["float_nodes"]) & {"conv", "fc", "head"}


@pytest.mark.parametrize(("target", "why"), [("trt", "TensorRT has no dynamic activation quantization"),
                                             ("hls", "HLS needs static scales")])
def test_trt_and_hls_refuse_dynamic(net: Path, tmp_path: Path, target: str, why: str,
                                    capsys: pytest.CaptureFixture[str]) -> None:
    for mode in ("dynamic", "auto"):
        out = tmp_path / f"{target}-{mode}"
        assert main(["build", str(net), "--target", target, "--mode", mode, "--calib", "random",
                     "-o", str(out)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("dsqc: error: --mode") and why in err[0]
        assert not out.exists()


@pytest.mark.parametrize(("option", "why"), [("io=int8", "-B io=int8"),
                                             ("float_undelegated=false", "-B float_undelegated=false")])
def test_tflite_refuses_dynamic_where_the_options_ask_for_int8_tensors(
        net: Path, tmp_path: Path, option: str, why: str, capsys: pytest.CaptureFixture[str]) -> None:
    """LiteRT's hybrid kernels take and give float tensors: int8 I/O or an all-int8 file cannot have them
    (before, ``-B io=int8`` was silently dropped and the file had float I/O)."""
    out = tmp_path / "out"
    args = ["build", str(net), "--target", "tflite", "--mode", "dynamic", "-B", option, "-o", str(out)]
    assert main(args) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and why in err[0] and "hybrid kernels" in err[0] and not out.exists()


def test_recipe_mode_key() -> None:
    assert parse_recipe({"quantization": {"mode": "dynamic"}}).mode == "dynamic"
    assert parse_recipe({}).mode == "static"
    with pytest.raises(RecipeError, match=r"quantization\.mode = 'runtime'"):
        parse_recipe({"quantization": {"mode": "runtime"}})


def test_auto_picks_per_node_from_the_measurement(tmp_path: Path) -> None:
    """Calibration samples with 40× outliers stretch the static ranges: the first layers gain from
    run-time scales; every decision follows the recorded SQNRs and the margin."""
    fp32 = small_net()
    x = np.load(_npz(tmp_path / "calib.npz", 32, 4, outliers=2))["x"]
    calib = SampleSet(feeds={"x": x}, source="test")
    profile = TargetProfile(name="t", compute_ops=frozenset({"Conv", "Gemm", "MatMul"}),
                            output_q_optional=frozenset({"Gemm", "MatMul"}))
    static = quantize_model(fp32, profile, Recipe(), calib)
    choices = choose_modes(fp32, static.plan, calib)
    assert {c.node for c in choices} == {"conv", "fc", "head"}
    for c in choices:
        assert c.mode == ("dynamic" if c.dynamic_sqnr_db > c.static_sqnr_db + MARGIN_DB else "static")
    assert next(c for c in choices if c.node == "conv").mode == "dynamic"  # outliers stretch its range
    gains = sorted(c.dynamic_sqnr_db - c.static_sqnr_db for c in choices)
    assert gains[0] < gains[-1]
    mixed = choose_modes(fp32, static.plan, calib, margin_db=(gains[0] + gains[-1]) / 2)
    assert {c.mode for c in mixed} == {"static", "dynamic"}  # per node, not per model
    assert all(c.mode == "static" for c in choose_modes(fp32, static.plan, calib, margin_db=1e9))


def test_auto_measures_the_output_q_where_tflite_puts_it_after_the_bias() -> None:
    """``tflite`` runs MatMul + bias Add as one FULLY_CONNECTED whose int8 output Q follows the Add. The
    probe used to measure the static copy without that Q (the MatMul's own output has none) and so chose
    static for MiniLM's FFN outputs: 8.9 dB built, where the choice measured with the Q gives 17.3 dB.
    One outlier output column stretches the Add's static scale over the rest."""
    from dsqc.backends.tflite.profile import tflite_profile

    rng = np.random.default_rng(4)
    weight = rng.normal(size=(16, 8)).astype(np.float32)
    weight[:, 0] *= 200.0  # one residual-stream-like outlier channel
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("Add", ["h", "b"], ["y"], name="fc_bias")], "fc",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(weight, "w"),
         numpy_helper.from_array(rng.normal(size=8).astype(np.float32), "b")])
    fp32 = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    x = rng.uniform(-1, 1, size=(32, 16)).astype(np.float32)
    x[:, :2] = [1.0, -1.0]  # every sample spans the calibrated range: static and run-time input scales agree
    calib = SampleSet(feeds={"x": x}, source="test")
    static = quantize_model(fp32, tflite_profile(True), Recipe(), calib)
    assert static.placement.fused_biases == {"fc_bias": "fc"} and "h" not in static.plan.tensors
    blind = choose_modes(fp32, static.plan, calib)[0]
    seen = choose_modes(fp32, static.plan, calib, fused_biases=static.placement.fused_biases)[0]
    assert blind.mode == "static" and seen.mode == "dynamic"
    assert seen.static_sqnr_db < blind.static_sqnr_db - 5  # the output Q costs what the build will pay


def test_auto_build_records_the_choice(net: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    calib = _npz(tmp_path / "calib.npz", 40, 4, outliers=2)
    assert main(["build", str(net), "--target", "onnx", "--mode", "auto", "--calib", str(calib),
                 "--no-latency", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    nodes = report["metrics"]["dynamic"]["nodes"]
    assert report["metrics"]["dynamic"]["mode"] == "auto" and set(nodes) == {"conv", "fc", "head"}
    model = onnx.load(out / "net.int8.onnx")
    on_dynamic_kernels = {n.name.rsplit("_", 1)[0] for n in model.graph.node
                          if n.op_type in ("DynamicQuantizeMatMul", "ConvInteger")}
    assert on_dynamic_kernels == {name for name, c in nodes.items() if c["mode"] == "dynamic"}
    for name, c in nodes.items():
        assert f"{c['mode']} (--mode auto)" in report["plan"]["nodes"][name]["reason"]


def test_recipe_sets_the_mode_and_per_tensor_weights(net: Path, tmp_path: Path) -> None:
    recipe = tmp_path / "r.toml"
    recipe.write_text('[quantization]\nmode = "dynamic"\nper_channel = false\n')
    out = tmp_path / "out"
    assert main(["build", str(net), "--target", "onnx", "--recipe", str(recipe), "--no-latency",
                 "--eval-data", str(_npz(tmp_path / "eval.npz", 8, 1)), "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["dynamic"]["mode"] == "dynamic"
    spec = report["plan"]["tensors"]["head_w"]
    assert spec["axis"] is None and np.asarray(spec["scale"]).ndim == 0
    assert report["metrics"]["verification"]["outputs"]["y"]["sqnr_db"] > 20.0


def test_debug_refuses_a_dynamic_build(net: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out, data = tmp_path / "out", _npz(tmp_path / "eval.npz", 8, 1)
    assert main(["build", str(net), "--target", "onnx", "--mode", "dynamic", "--no-latency", "-q",
                 "--eval-data", str(data), "-o", str(out)]) == 0
    capsys.readouterr()
    assert main(["debug", str(net), str(out), "--eval-data", str(data)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "it was built with --mode dynamic; rebuild with --mode static" in err[0]


def test_tflite_dynamic_reference_quantizes_each_image_of_a_batch(tmp_path: Path) -> None:
    """A model pinned to batch 2: LiteRT's hybrid CONV_2D quantizes each image with its own scale and the
    FULLY_CONNECTED each row, and so does the canonical model, so a quiet image beside a loud one is
    measured as the file computes it (one scale per tensor would read the quiet image far worse)."""
    model = small_net()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    model.graph.output[0].type.tensor_type.shape.dim[0].dim_value = 2
    onnx.save(model, tmp_path / "pair.onnx")
    x = np.random.default_rng(4).standard_normal((8, 3, 8, 8)).astype(np.float32)
    x[::2] *= 0.01  # each batch of two: a quiet image and a loud one
    np.savez(tmp_path / "eval.npz", x=x)
    out = tmp_path / "out"
    assert main(["build", str(tmp_path / "pair.onnx"), "--target", "tflite", "--mode", "dynamic",
                 "--no-latency", "--eval-data", str(tmp_path / "eval.npz"), "-o", str(out)]) == 0
    metrics = json.loads((out / "report.json").read_text())["metrics"]
    litert = metrics["tflite"]["verification"]
    assert litert["vs_qdq"]["y"]["sqnr_db"] > 100
    assert abs(metrics["verification"]["outputs"]["y"]["sqnr_db"] - litert["outputs"]["y"]["sqnr_db"]) < 0.01
