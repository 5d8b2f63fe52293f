"""Float nodes are named with their real reason; a tflite build with one no longer crashes the report;
a build whose int8 model measured slower than FP32 warns with the ratio (issue 12, items 3 and 7)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

import dsqc.quant.latency_guard
import dsqc.verify
from dsqc.backends.registry import get_backend
from dsqc.driver.build_types import BuildResult
from dsqc.driver.cli import main
from dsqc.driver.report import speed_warnings
from dsqc.verify import Timing
from tests.conftest import conv_bn_model


@pytest.fixture
def conv_bn_files(tmp_path: Path) -> tuple[Path, Path]:
    model = tmp_path / "conv_bn.onnx"
    onnx.save(conv_bn_model(), model)
    calib = tmp_path / "calib.npz"
    np.savez(calib, input=np.random.default_rng(0).normal(size=(40, 3, 16, 16)).astype(np.float32))
    return model, calib


def test_tflite_build_with_a_float_node_names_it(conv_bn_files: tuple[Path, Path], tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    model, calib = conv_bn_files
    recipe = tmp_path / "keep_fc.toml"
    recipe.write_text('[exclude]\nnodes = ["fc"]\n')
    code = main(["build", str(model), "--target", "tflite", "--calib", str(calib), "--recipe", str(recipe),
                 "-o", str(tmp_path / "out")])
    out = capsys.readouterr().out
    assert code == 0
    assert "float nodes: 1" in out and "fc — fp32: recipe keeps it in fp32" in out
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    expected = {"fc": {"precision": "fp32", "reason": "recipe keeps it in fp32"}}
    assert report["metrics"]["float_nodes"] == expected
    assert "fc" in report["metrics"]["tflite"]["int8"]["float_nodes"]  # LiteRT's file computes it in float


def two_conv_model() -> onnx.ModelProto:
    """input → conv1 → Relu → conv2 → Relu → GlobalAveragePool → Flatten → fc."""
    rng = np.random.default_rng(1)
    def init(name: str, *shape: int) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, 0.3, shape).astype(np.float32), name)
    nodes = [helper.make_node("Conv", ["input", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
             helper.make_node("GlobalAveragePool", ["r2"], ["g"], name="gap"),
             helper.make_node("Flatten", ["g"], ["f"], name="flatten"),
             helper.make_node("Gemm", ["f", "fc_w", "fc_b"], ["logits"], name="fc", transB=1)]
    graph = helper.make_graph(nodes, "two_conv",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 16, 16])],
                              [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 4])],
                              [init("w1", 8, 3, 3, 3), init("b1", 8), init("w2", 8, 8, 3, 3), init("b2", 8),
                               init("fc_w", 4, 8), init("fc_b", 4)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    return model


def _int8_conv(proto: onnx.ModelProto) -> bool:
    dq_out = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return any(n.op_type == "Conv" and n.input[0] in dq_out for n in proto.graph.node)


def test_slower_int8_warns_and_recipe_exclusion_keeps_its_reason(conv_bn_files: tuple[Path, Path],
                                                                  tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    """Timings are faked (a shared machine decides nothing): any int8 Conv makes a model slow, so the
    latency guard keeps Conv in fp32, and the final model still measures 1.4× FP32. conv1, excluded by
    the recipe, must keep the recipe as its reason; only conv2 is the guard's doing."""
    model = tmp_path / "two_conv.onnx"
    onnx.save(two_conv_model(), model)
    _, calib = conv_bn_files
    recipe = tmp_path / "keep_conv1.toml"
    recipe.write_text('[exclude]\nnodes = ["conv1"]\n')

    def guard_clock(protos: list[onnx.ModelProto], feeds: object) -> list[Timing]:
        return [Timing(1.0, 1.0)] + [Timing(1.5, 1.5) if _int8_conv(p) else Timing(0.9, 0.9)
                                     for p in protos[1:]]

    monkeypatch.setattr(dsqc.quant.latency_guard, "compare_latency", guard_clock)
    monkeypatch.setattr(dsqc.verify, "compare_latency",
                        lambda protos, feeds: [Timing(1.0, 1.0), Timing(1.4, 1.4)])
    assert main(["build", str(model), "--target", "onnx", "--calib", str(calib), "--recipe", str(recipe),
                 "-o", str(tmp_path / "out")]) == 0
    err = capsys.readouterr().err
    assert "warning: the int8 model ran 1.40× SLOWER than FP32 here" in err
    nodes = json.loads((tmp_path / "out" / "report.json").read_text())["metrics"]["float_nodes"]
    assert nodes["conv1"]["reason"] == "recipe keeps it in fp32"
    assert nodes["conv2"]["reason"] == "latency guard: int8 Conv ran slower than FP32 here"


def test_speed_warnings_from_metrics() -> None:
    fast = {"verification": {"latency_ms": {"fp32": 1.0, "quantized": 0.5, "ratio": 0.5, "cpu_ratio": 0.5}}}
    assert speed_warnings(fast) == []
    noise = {"verification": {"latency_ms": {"ratio": 1.04, "cpu_ratio": 1.03}}}
    assert speed_warnings(noise) == []
    slow_tflite = {"tflite": {"latency_ms": {"int8": 2.0, "float32": 1.0, "speedup": 0.5}}}
    assert speed_warnings(slow_tflite) == []  # the core speaks for ORT; LiteRT's timing is the backend's
    result = BuildResult(out_dir=Path("out"), target="tflite", precision="int8", metrics=slow_tflite)
    assert get_backend("tflite").speed_warnings(result) == [
        "the int8 .tflite ran 2.00× SLOWER than its float32 twin in LiteRT here (1 thread, XNNPACK): "
        "2.000 vs 1.000 ms"]
    slow_tflite["tflite"]["int8"] = {"undelegated_int8": ["attn/MatMul", "attn/Softmax"]}
    hint = get_backend("tflite").speed_warnings(result)[0]
    assert hint.endswith("; 2 int8 op(s) XNNPACK does not take (BATCH_MATMUL of two activations, SOFTMAX) "
                         "split its graph: -B float_undelegated=true (the default) plans them float")
