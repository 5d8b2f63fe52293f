"""Lowering QDQ ONNX to the integer program: structure, unsupported nodes, uint8 zero-point shift."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import onnx
import pytest
from _integer_models import case, fuse_bn, make_model, quantize, random_feeds
from onnx import helper

from dsqc.backends.hls import HLS_PROFILE
from dsqc.backends.onnx.profile import ONNX_PROFILE
from dsqc.errors import UnsupportedError
from dsqc.integer import (
    ConvOp,
    DenseOp,
    ElementwiseOp,
    MissingLowerings,
    PoolOp,
    lower,
    quantize_inputs,
    run,
)
from dsqc.integer.compare import compare_with_ort, per_op_with_ort


def test_mnist_lowers_to_integer_ops() -> None:
    program = lower(case("mnist").qdq, "mnist")
    kinds = [type(op) for op in program.ops]
    assert kinds == [ConvOp, PoolOp, ConvOp, PoolOp, ConvOp, ElementwiseOp, DenseOp, DenseOp]
    assert [program.tensors[b.tensor].shape for b in program.outputs] == [(1, 10)]
    conv = program.ops[0]
    assert isinstance(conv, ConvOp) and conv.weight.dtype == np.int8 and conv.bias.dtype == np.int32
    assert conv.requant is not None and conv.requant.per_channel
    # The folded ReLU is the output clamp: zero point -128 = real 0.
    assert program.tensors[conv.output].zero_point == -128
    assert sum(program.macs()) == 1_568_640


def test_reference_is_deterministic_and_batched() -> None:
    c = case("resnet")
    program = lower(c.qdq)
    q = quantize_inputs(program, c.eval_feeds)
    whole = run(program, q)["logits"]
    parts = np.concatenate([run(program, {"input": q["input"][i:i + 5]})["logits"] for i in range(0, 64, 5)])
    assert whole.dtype == np.int8 and np.array_equal(whole, parts)


def _hardmax_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("Hardmax", ["c"], ["out"], name='x"; system("rm -rf /"); //', axis=1)]
    return make_model(nodes, {"input": ["N", 3, 8, 8]}, {"out": ["N", 4, 6, 6]}, inits)


def test_unsupported_node_is_named_on_one_line() -> None:
    fp32 = fuse_bn(_hardmax_model())
    qdq, _ = quantize(fp32, HLS_PROFILE, random_feeds(fp32, 8))
    with pytest.raises(UnsupportedError) as err:
        lower(qdq)
    message = str(err.value)
    assert "\n" not in message and "Hardmax" in message and 'x"; system(' in message


def test_float_graph_output_is_unsupported() -> None:
    c = case("mnist")
    profile = replace(ONNX_PROFILE, name="onnx-test")  # Gemm output Q optional: logits stay float
    qdq, _ = quantize(c.fp32, profile, c.eval_feeds)
    with pytest.raises(UnsupportedError, match="stays float"):
        lower(qdq)


def test_uint8_activations_shift_to_int8() -> None:
    """The onnx profile's uint8 tensors lower by zero-point shift and still match ORT."""
    c = case("resnet")
    profile = replace(ONNX_PROFILE, output_q_optional=frozenset())
    qdq, _ = quantize(c.fp32, profile, random_feeds(c.fp32, 64, seed=1))
    program = lower(qdq)
    stats = per_op_with_ort(qdq, program, c.eval_feeds)
    assert max(int(s["max_lsb"]) for s in stats.values()) <= 1
    ref = run(program, quantize_inputs(program, c.eval_feeds))
    assert compare_with_ort(qdq, program, c.eval_feeds, ref)["float_requant"]["max_lsb"] == 0


def test_every_missing_op_type_is_named_at_once() -> None:
    """A transformer lacks several lowerings: one line names each op type, its count and first node."""
    rng = np.random.default_rng(0)
    inits = {"w": rng.normal(0, 0.3, (4, 3, 3, 3)).astype(np.float32)}
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv"),
             helper.make_node("Hardmax", ["c"], ["s"], name="hard_a", axis=1),
             helper.make_node("Hardmax", ["s"], ["t"], name="hard_b", axis=1),
             helper.make_node("LpNormalization", ["t"], ["out"], name="lp", axis=1)]
    fp32 = fuse_bn(make_model(nodes, {"input": ["N", 3, 8, 8]}, {"out": ["N", 4, 6, 6]}, inits))
    qdq, _ = quantize(fp32, HLS_PROFILE, random_feeds(fp32, 8))
    with pytest.raises(MissingLowerings) as err:  # an UnsupportedError the hls target explains further
        lower(qdq)
    message = str(err.value)
    assert message.startswith("node 'hard_a' (Hardmax): not supported by the integer program "
                              "(2 nodes of it; LpNormalization (1 node, first 'lp'); supported: ")
    assert "\n" not in message
