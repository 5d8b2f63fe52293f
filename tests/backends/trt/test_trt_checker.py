"""check_trt: planted faults are caught and named; clean models stay clean."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from trt_models import attention_block, qdq_conv, residual_cnn

from dsqc.backends.trt import Finding, check_trt, format_findings


def rules(findings: list[Finding], severity: str = "error") -> set[tuple[str, str]]:
    return {(f.node, f.rule) for f in findings if f.severity == severity}


def test_clean_hand_made_qdq_conv() -> None:
    findings = check_trt(qdq_conv())
    assert findings == []
    assert format_findings(findings).startswith("clean")


@pytest.mark.parametrize(("model", "expected"), [
    (qdq_conv(zero_point=5), {("q_x", "zero-point"), ("dq_x", "zero-point")}),
    (qdq_conv(weight_axis=1), {("dq_w", "axis")}),
    (qdq_conv(scale=-0.02), {("q_x", "scale"), ("dq_x", "scale")}),
    (qdq_conv(q_chain=True), {("q_again", "qdq-chain")}),
    (qdq_conv(act_dtype=TensorProto.UINT8), {("q_x", "dtype"), ("dq_x", "dtype")}),
    (qdq_conv(scale=float("nan")), {("q_x", "scale"), ("dq_x", "scale")}),
    (qdq_conv(opset=12), {("(model)", "opset")}),
], ids=["zero-point-5", "conv-weight-axis-1", "negative-scale", "q-q-chain", "uint8-activation", "nan-scale",
        "opset-12"])
def test_planted_fault_is_an_error_naming_the_node(model: onnx.ModelProto,
                                                   expected: set[tuple[str, str]]) -> None:
    assert rules(check_trt(model)) == expected


def test_per_channel_dq_without_axis_is_flagged() -> None:
    model = qdq_conv()
    dq_w = next(n for n in model.graph.node if n.name == "dq_w")
    del dq_w.attribute[:]  # ONNX default axis 1, TensorRT's parser axis 0: the model means different things
    assert ("dq_w", "axis") in rules(check_trt(model))


def test_missing_zero_point_is_uint8_in_onnx() -> None:
    model = qdq_conv()
    for node in model.graph.node:
        if node.name in ("q_x", "dq_x"):
            del node.input[2]
    findings = [f for f in check_trt(model) if f.rule == "dtype"]
    assert {f.node for f in findings} == {"q_x", "dq_x"}
    assert "uint8" in findings[0].message


def test_qdq_between_conv_and_relu_is_a_warning() -> None:
    findings = check_trt(qdq_conv(relu_after_q=True))
    assert rules(findings) == set()
    assert ("dq_c", "fusion") in rules(findings, "warning")
    assert "Relu" in next(f.message for f in findings if f.node == "dq_c")


def test_requantize_without_op_between() -> None:
    model = qdq_conv()
    model.graph.initializer.append(numpy_helper.from_array(np.array(0.05, np.float32), "other_scale"))
    model.graph.node.insert(2, helper.make_node("QuantizeLinear", ["xd", "other_scale", "x_zero"], ["xr"],
                                                name="requant"))
    assert ("requant", "requantize") in rules(check_trt(model))


def _qdq_softmax() -> onnx.ModelProto:
    inits = [numpy_helper.from_array(np.array(0.1, np.float32), "s"),
             numpy_helper.from_array(np.array(0, np.int8), "z")]
    nodes = [helper.make_node("QuantizeLinear", ["x", "s", "z"], ["xq"], name="q"),
             helper.make_node("DequantizeLinear", ["xq", "s", "z"], ["xd"], name="dq"),
             helper.make_node("Softmax", ["xd"], ["y"], name="softmax")]
    graph = helper.make_graph(nodes, "sm", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_qdq_into_softmax_warns_unless_asked() -> None:
    assert ("dq", "fusion") in rules(check_trt(_qdq_softmax()), "warning")
    assert check_trt(_qdq_softmax(), allow_float_qdq=["Softmax"]) == []


def _int4_matmul(consumer: str = "MatMul", opset: int = 21) -> onnx.ModelProto:
    packed = helper.make_tensor("w_q", TensorProto.INT4, [8, 4], np.ones(32, np.int8).tolist())
    zero = helper.make_tensor("w_zero", TensorProto.INT4, [2, 4], np.zeros(8, np.int8).tolist())
    inits = [packed, numpy_helper.from_array(np.full((2, 4), 0.1, np.float32), "w_scale"), zero]
    nodes = [helper.make_node("DequantizeLinear", ["w_q", "w_scale", "w_zero"], ["w"], name="dq_w", axis=0,
                              block_size=4)]
    if consumer == "MatMul":
        nodes.append(helper.make_node("MatMul", ["x", "w"], ["y"], name="mm"))
    else:
        nodes.append(helper.make_node("Add", ["x", "w"], ["y"], name="add"))
    graph = helper.make_graph(nodes, "int4", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def test_int4_only_for_blockwise_matmul_weights() -> None:
    assert rules(check_trt(_int4_matmul())) == set()
    assert ("dq_w", "dtype") in rules(check_trt(_int4_matmul("Add")))
    assert ("dq_w", "opset") in rules(check_trt(_int4_matmul(opset=17)))


def test_fp32_model_has_no_qdq_warning() -> None:
    findings = check_trt(residual_cnn())
    assert [(f.rule, f.severity) for f in findings] == [("no-qdq", "warning")]


def test_format_findings_lists_errors_first_with_a_count() -> None:
    text = format_findings(check_trt(qdq_conv(zero_point=5, relu_after_q=True)))
    lines = text.splitlines()
    assert lines[0].startswith("error") and "[zero-point]" in lines[0]
    assert lines[-1] == "4 error(s), 1 warning(s)"


def test_ort_quantizer_output_is_flagged() -> None:
    """ORT's quantize_static (asymmetric int8 activations, int32 bias) breaks TensorRT's rules."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self.batches = iter([{"x": rng.normal(0, 1, (2, 6, 16)).astype(np.float32)} for _ in range(3)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "a.onnx", Path(tmp) / "a_q.onnx"
        onnx.save(attention_block(), src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8, per_channel=True)
        findings = check_trt(onnx.load(str(dst)))
    assert {"zero-point"} <= {f.rule for f in findings if f.severity == "error"}
    assert all(f.node for f in findings)


def test_dsqc_check_runs_the_backends_checker(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``dsqc check --target T`` asks T's backend (``check_model``); a target without one is one line."""
    from dsqc.driver.cli import main

    clean, broken = tmp_path / "clean.onnx", tmp_path / "broken.onnx"
    for model, path in ((qdq_conv(), clean), (qdq_conv(zero_point=5), broken)):
        for _ in range(4):  # the loader wants the output's rank
            model.graph.output[0].type.tensor_type.shape.dim.add()
        onnx.save(model, path)
    assert main(["check", "--target", "trt", str(clean)]) == 0
    assert capsys.readouterr().out.startswith("clean")
    assert main(["check", "--target", "trt", str(broken)]) == 1
    assert "zero-point" in capsys.readouterr().out
    assert main(["check", "--target", "onnx", str(clean)]) == 2
    assert capsys.readouterr().err.strip() == ("dsqc: error: check --target onnx: that target has no rules "
                                               "checker; targets with one: trt")
