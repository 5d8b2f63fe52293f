"""Planted defects are caught by ``validate`` with a message naming the tensor, before LiteRT loads them."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest
from _models import cnn, samples
from _qdq import normalize, qdq_model, run_tflite_isolated

from dsqc.backends.tflite.graph import Graph, QParams
from dsqc.backends.tflite.lower import lower
from dsqc.backends.tflite.validate import TfliteValidationError, validate
from dsqc.backends.tflite.writer import serialize
from dsqc.errors import DsqcError


@pytest.fixture(scope="module")
def graph_factory() -> Callable[[], Graph]:
    fp32 = normalize(cnn())
    qdq, _ = qdq_model(fp32, samples(fp32, 4))
    return lambda: lower(qdq)[0]


def _tensor(graph: Graph, name: str) -> int:
    return next(i for i, t in enumerate(graph.tensors) if t.name == name)


def _first_op(graph: Graph, kind: str) -> int:
    return next(i for i, op in enumerate(graph.ops) if op.kind == kind)


def test_sound_file_passes(graph_factory: Callable[[], Graph]) -> None:
    validate(serialize(graph_factory()))


def test_missing_quantization_is_caught_before_the_interpreter(graph_factory: Callable[[], Graph]) -> None:
    graph = graph_factory()
    graph.tensors[_tensor(graph, "c2_quantized")].quant = None
    blob = serialize(graph)
    with pytest.raises(TfliteValidationError, match=r"tensor 'c2_quantized' \(INT8\) has no quantization"):
        validate(blob)
    with pytest.raises(AssertionError):  # what the guard protects against: LiteRT fails on this file
        run_tflite_isolated(blob, [[np.zeros((1, 3, 12, 12), np.float32)]])


@pytest.mark.parametrize(("plant", "message"), [
    ("bias_scale", r"CONV_2D: bias 'b1' scale .* != input scale × weight scale"),
    ("weight_zero_point", r"weight 'w1' must have zero point 0"),
    ("weight_minus_128", r"weight 'w1' holds -128"),
    ("zero_scale", r"tensor 'r1_quantized': scale \[0.0\] is not positive"),
    ("per_channel_count", r"tensor 'w1': 7 per-channel scales do not match dimension 0"),
    ("softmax_beta", r"SOFTMAX writing .* beta 0.0"),
    ("softmax_fixed", r"SOFTMAX output .* must have scale 0.00390625 and zero point -128"),
    ("shared_scale", r"MAX_POOL_2D: input .* and output .* must share scale and zero point"),
    ("strides", r"CONV_2D writing .* strides must be ≥ 1"),
])
def test_planted_defect_is_named(graph_factory: Callable[[], Graph], plant: str, message: str) -> None:
    graph = graph_factory()
    conv = graph.ops[_first_op(graph, "CONV_2D")]
    weight, bias = graph.tensors[conv.inputs[1]], graph.tensors[conv.inputs[2]]
    assert weight.quant is not None and bias.quant is not None and weight.data is not None
    if plant == "bias_scale":
        bias.quant = QParams(bias.quant.scale * 2, bias.quant.zero_point)
    elif plant == "weight_zero_point":
        weight.quant = QParams(weight.quant.scale, weight.quant.zero_point + 1, 0)
    elif plant == "weight_minus_128":
        weight.data.reshape(-1)[0] = -128
    elif plant == "zero_scale":
        graph.tensors[conv.outputs[0]].quant = QParams.of(0.0, -128)
    elif plant == "per_channel_count":
        weight.quant = QParams(weight.quant.scale[:7], weight.quant.zero_point[:7], 0)
    elif plant in ("softmax_beta", "softmax_fixed"):
        softmax = graph.ops[_first_op(graph, "SOFTMAX")]
        if plant == "softmax_beta":
            softmax.options.beta = 0.0
        else:
            graph.tensors[softmax.outputs[0]].quant = QParams.of(0.01, 0)
    elif plant == "shared_scale":
        pool = graph.ops[_first_op(graph, "MAX_POOL_2D")]
        graph.tensors[pool.outputs[0]].quant = QParams.of(0.5, 3)
    elif plant == "strides":
        conv.options.strideW = 0
    with pytest.raises(TfliteValidationError, match=message) as info:
        validate(serialize(graph))
    assert isinstance(info.value, DsqcError) and "\n" not in str(info.value)


def test_not_a_tflite_file() -> None:
    with pytest.raises(TfliteValidationError, match="not a TFLite flatbuffer"):
        validate(b"\x00" * 64)
    with pytest.raises(TfliteValidationError, match=r"unreadable flatbuffer|not a TFLite"):
        validate(b"\x10\x00\x00\x00TFL3" + b"\xff" * 24)
