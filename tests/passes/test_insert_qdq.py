"""InsertQDQ on the real MNIST CNN: dsqc's planner (``hls`` and ``onnx`` profiles) with min/max ranges
measured in ONNX Runtime on real training digits, then ORT runs the QDQ model on held-out digits.

Tolerances: every Q→DQ pair matches numpy's QuantizeLinear/DequantizeLinear of the same float input
exactly (0 LSB: both divide in float32 and round half to even); every stored weight and bias
dequantizes exactly to ``dequantize(quantize(w, spec))``; the logits stay within 30 dB SQNR of FP32
and agree on ≥ 98 % of the top-1 classes (the full builds reach 37–50 dB with bias correction).
"""

from __future__ import annotations

from functools import cache

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from _graphs import make_model, randn, run, value
from onnx import helper, numpy_helper

from dsqc.backends.hls.profile import HLS_PROFILE
from dsqc.backends.onnx.profile import ONNX_PROFILE
from dsqc.driver.pipeline import normalize
from dsqc.errors import PassError
from dsqc.ir import Model
from dsqc.models.mnist import DEMO_MODEL_PATH, load_mnist
from dsqc.passes.insert_qdq import InsertQDQ
from dsqc.quant.planner import Range, finalize, place
from dsqc.quant.qparams import dequantize, quantize
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import NodeDecision, Precision, QuantPlan, QuantSpec

PROFILES = {"hls": HLS_PROFILE, "onnx": ONNX_PROFILE}
MIN_SQNR_DB = 30.0


def _ort(proto: onnx.ModelProto, feeds: dict[str, np.ndarray],
         names: list[str] | None = None) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # reference Q/DQ
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in sess.run(names, feeds)]


def _with_outputs(proto: onnx.ModelProto, names: list[str]) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    present = {o.name for o in out.graph.output}
    out.graph.output.extend(onnx.ValueInfoProto(name=n) for n in names if n not in present)
    return out


@cache
def _fp32() -> onnx.ModelProto:
    return normalize(onnx.load(DEMO_MODEL_PATH)).model


@cache
def _case(target: str) -> tuple[onnx.ModelProto, QuantPlan, onnx.ModelProto]:
    """(normalized FP32 model, plan, QDQ model) for ``target``'s profile."""
    fp32, profile, recipe = _fp32(), PROFILES[target], Recipe(method="minmax")
    model = Model.from_proto(fp32)
    placement = place(model, profile, recipe)
    calib = {"input": load_mnist("train")[0][:256]}
    values = _ort(_with_outputs(fp32, placement.activations), calib, placement.activations)
    ranges = {n: Range(float(v.min()), float(v.max()))
              for n, v in zip(placement.activations, values, strict=True)}
    plan = finalize(model, placement, ranges, profile, recipe)
    result = InsertQDQ(plan, profile.float_readers_read_float)(model)
    assert result.modified
    qdq = result.model.to_proto()
    qdq.ir_version = fp32.ir_version
    return fp32, plan, qdq


def _initializers(proto: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}


@pytest.mark.parametrize("target", sorted(PROFILES))
def test_structure_follows_the_plan(target: str) -> None:
    fp32, plan, qdq = _case(target)
    onnx.checker.check_model(qdq, full_check=True)
    assert not {"QuantizeLinear", "DequantizeLinear"} & {n.op_type for n in fp32.graph.node}
    assert [i.name for i in qdq.graph.input] == [i.name for i in fp32.graph.input]
    assert [o.name for o in qdq.graph.output] == [o.name for o in fp32.graph.output]
    names = {n.name for n in qdq.graph.node}
    assert not set(plan.folded_activations) & names, "folded Relu nodes are gone: the Q clamps"
    readers: dict[str, int] = {}
    for node in qdq.graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    dq_outputs = [n.output[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"]
    assert all(readers.get(d, 0) <= 1 for d in dq_outputs), "one DQ per reader"
    fp32_constants = _initializers(fp32)
    activations = {name for name in plan.tensors if name not in fp32_constants}
    quantized = [n.input[0].removesuffix("_float") for n in qdq.graph.node if n.op_type == "QuantizeLinear"]
    assert sorted(quantized) == sorted(activations), "one Q per planned activation"


@pytest.mark.parametrize("target", sorted(PROFILES))
def test_constants_are_stored_quantized_exactly(target: str) -> None:
    fp32, plan, qdq = _case(target)
    fp32_constants, stored = _initializers(fp32), _initializers(qdq)
    dq_inputs = {n.input[0] for n in qdq.graph.node if n.op_type == "DequantizeLinear"}
    checked = 0
    for name, spec in plan.tensors.items():
        if name not in fp32_constants:
            continue
        q = stored[f"{name}_quantized"]
        assert f"{name}_quantized" in dq_inputs and q.dtype == np.dtype(spec.dtype)
        expected = dequantize(quantize(fp32_constants[name], spec), spec)
        np.testing.assert_array_equal(dequantize(q.astype(np.int64), spec), expected)
        checked += 1
    assert checked >= 6  # 3 Conv + 1 Gemm weights, and their biases


@pytest.mark.parametrize("target", sorted(PROFILES))
def test_each_q_dq_pair_is_numpys_fake_quant_in_ort(target: str) -> None:
    _, _, qdq = _case(target)
    inits = _initializers(qdq)
    pairs = []
    for q in (n for n in qdq.graph.node if n.op_type == "QuantizeLinear"):
        dq = next(n for n in qdq.graph.node if n.op_type == "DequantizeLinear" and n.input[0] == q.output[0])
        pairs.append((q.input[0], dq.output[0], inits[q.input[1]], inits[q.input[2]]))
    assert len(pairs) >= 4
    names = [name for x, y, _, _ in pairs for name in (x, y)]
    feeds = {"input": load_mnist("test")[0][:32]}
    values = dict(zip(names, _ort(_with_outputs(qdq, names), feeds, names), strict=True))
    for x, y, scale, zero in pairs:
        spec = QuantSpec(str(zero.dtype), scale, zero.astype(np.int64))
        np.testing.assert_array_equal(values[y], dequantize(quantize(values[x], spec), spec), err_msg=x)


@pytest.mark.parametrize("target", sorted(PROFILES))
def test_quantized_logits_stay_close_to_fp32(target: str) -> None:
    fp32, _, qdq = _case(target)
    feeds = {"input": load_mnist("test")[0][:200]}
    (ref,), (got,) = _ort(fp32, feeds), _ort(qdq, feeds)
    sqnr = 10 * np.log10(np.sum(ref.astype(np.float64) ** 2) / np.sum((ref - got).astype(np.float64) ** 2))
    assert sqnr >= MIN_SQNR_DB, sqnr
    assert np.mean(ref.argmax(1) == got.argmax(1)) >= 0.98


def test_refuses_a_model_that_already_holds_qdq() -> None:
    _, plan, qdq = _case("hls")
    with pytest.raises(PassError, match="pass InsertQDQ: the model already holds QuantizeLinear"):
        InsertQDQ(plan)(Model.from_proto(qdq))


def test_a_plan_naming_an_unknown_tensor_fails_with_its_name() -> None:
    spec = QuantSpec("uint8", np.float32(0.1), np.int64(128))
    with pytest.raises(PassError, match="plan names tensor 'nowhere'"):
        InsertQDQ(QuantPlan(tensors={"nowhere": spec}))(Model.from_proto(_fp32()))


def _branch_model() -> onnx.ModelProto:
    """x → Relu → t; t feeds an int8 Conv and a float Sigmoid."""
    nodes = [helper.make_node("Relu", ["x"], ["t"], name="relu"),
             helper.make_node("Conv", ["t", "w"], ["c"], name="conv"),
             helper.make_node("Sigmoid", ["t"], ["s"], name="sigmoid")]
    w = numpy_helper.from_array(randn([2, 2, 1, 1], seed=4), "w")
    return make_model(nodes, [value("x", [1, 2, 4, 4])], [value("c", [1, 2, 4, 4]), value("s", [1, 2, 4, 4])],
                      [w])


@pytest.mark.parametrize("float_readers_read_float", [False, True])
def test_float_readers_of_a_float_producer_keep_the_float_tensor(float_readers_read_float: bool) -> None:
    proto = _branch_model()
    spec = QuantSpec("uint8", np.float32(4.0 / 255), np.int64(0))
    nodes = {"conv": NodeDecision(Precision.INT8, "test"), "relu": NodeDecision(Precision.FP32, "test"),
             "sigmoid": NodeDecision(Precision.FP32, "test")}
    plan = QuantPlan(tensors={"t": spec}, nodes=nodes)
    model = Model.from_proto(proto)
    InsertQDQ(plan, float_readers_read_float)(model)
    after = model.to_proto()
    onnx.checker.check_model(after, full_check=True)
    sigmoid = next(n for n in after.graph.node if n.op_type == "Sigmoid")
    assert (sigmoid.input[0] == "t") is float_readers_read_float
    feeds = {"x": randn([1, 2, 4, 4], seed=5)}
    (c_ref, s_ref), (c_got, s_got) = run(proto, feeds), run(after, feeds)
    step = float(spec.scale)
    assert np.max(np.abs(s_got - s_ref)) <= (0.0 if float_readers_read_float else step / 8)
    assert np.max(np.abs(c_got - c_ref)) <= step / 2 * float(np.abs(numpy_helper.to_array(
        proto.graph.initializer[0])).sum(axis=(1, 2, 3)).max()) + 1e-6
