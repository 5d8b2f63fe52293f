"""Split, nearest-neighbour Resize and a Softmax over a non-last axis on ``hls`` (YOLOv8's C2f split,
its neck's upsampling, its DFL's softmax): a Split becomes one Slice per output, a Resize by whole factors
an ``UpsampleOp`` whose ONNX coordinate rule is checked index by index (both copies on the input's
scale), a channel Softmax a ``SoftmaxOp`` whose rows are strided."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from _hls_helpers import emit
from _integer_models import Case, make_model, quantize, random_feeds
from onnx import helper

from dsqc.backends.hls import HLS_PROFILE
from dsqc.errors import UnsupportedError
from dsqc.integer import SliceOp, SoftmaxOp, UpsampleOp, lower
from dsqc.integer.compare import per_op_with_ort

needs_gcc = pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")),
                               reason="gcc/make/nm missing")


def _w(rng: np.random.Generator, *shape: int) -> np.ndarray:
    return rng.normal(0, 0.3, shape).astype(np.float32)


def neck(split: str = "sizes") -> onnx.ModelProto:
    """x[N, 3, 16, 16] → Conv s2 → Relu → Split on channels (``sizes``: [3, 5] by input; ``equal``:
    opset 18's num_outputs=2) → one part Conv s2 → Resize ×2 (nearest) → Concat with both parts → 1×1
    Conv → y."""
    rng = np.random.default_rng(0)
    inits = {"w0": _w(rng, 8, 3, 3, 3), "b0": _w(rng, 8), "w2": _w(rng, 8, 8, 1, 1), "b2": _w(rng, 8),
             "scales": np.array([1, 1, 2, 2], np.float32)}
    first = 3 if split == "sizes" else 4
    inits |= {"w1": _w(rng, 4, first, 3, 3), "b1": _w(rng, 4)}
    inits["w2"] = _w(rng, 8, 4 + 8, 1, 1)
    if split == "sizes":
        inits["parts"] = np.array([3, 5], np.int64)
        split_node = helper.make_node("Split", ["r", "parts"], ["a", "b"], name="split", axis=1)
    else:
        split_node = helper.make_node("Split", ["r"], ["a", "b"], name="split", axis=1, num_outputs=2)
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="stem", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r"], name="relu"),
        split_node,
        helper.make_node("Conv", ["a", "w1", "b1"], ["c1"], name="down", strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("Resize", ["c1", "", "scales"], ["up"], name="upsample", mode="nearest",
                         coordinate_transformation_mode="asymmetric", nearest_mode="floor"),
        helper.make_node("Concat", ["up", "a", "b"], ["cat"], name="concat", axis=1),
        helper.make_node("Conv", ["cat", "w2", "b2"], ["y"], name="head"),
    ]
    return make_model(nodes, {"x": ["N", 3, 16, 16]}, {"y": ["N", 8, 8, 8]}, inits,
                      opset=13 if split == "sizes" else 18)


@needs_gcc
@pytest.mark.parametrize("split", ["sizes", "equal"])
def test_split_and_upsample_are_bit_exact(tmp_path: Path, split: str) -> None:
    fp32 = neck(split)
    qdq, plan = quantize(fp32, HLS_PROFILE, random_feeds(fp32, 32, seed=1))
    program = lower(qdq, "neck")
    by_node = {op.node: op for op in program.ops}
    parts = [by_node[f"split/{i}"] for i in (0, 1)]
    assert all(isinstance(op, SliceOp) for op in parts)
    assert [op.sizes[1] for op in parts] == ([3, 5] if split == "sizes" else [4, 4])
    upsample = by_node["upsample"]
    assert isinstance(upsample, UpsampleOp) and upsample.factors == (1, 1, 2, 2)
    feeds = random_feeds(fp32, 4, seed=2)
    assert max(s["max_lsb"] for s in per_op_with_ort(qdq, program, feeds).values()) <= 1
    result = emit(Case("neck", fp32, qdq, plan, random_feeds(fp32, 8, seed=3)), tmp_path, tb_vectors=8)
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["vectors"] == 8
    source = (tmp_path / "hls" / "firmware" / "neck.c").read_text()
    assert "/* Resize node upsample" in source and "/* Split node split_1" in source


def _resize_model(attrs: dict[str, str], scale: float = 2.0, sizes: bool = False) -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = {"w": _w(rng, 4, 2, 1, 1), "b": _w(rng, 4)}
    out = int(6 * scale)
    if sizes:
        inits["sizes"] = np.array([1, 4, out, out], np.int64)
        resize = helper.make_node("Resize", ["c", "", "", "sizes"], ["y"], name="resize", mode="nearest",
                                  **attrs)
    else:
        inits["scales"] = np.array([1, 1, scale, scale], np.float32)
        resize = helper.make_node("Resize", ["c", "", "scales"], ["y"], name="resize", mode="nearest",
                                  **attrs)
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv"), resize]
    return make_model(nodes, {"x": [1, 2, 6, 6]}, {"y": [1, 4, out, out]}, inits)


@pytest.mark.parametrize(("attrs", "scale", "sizes"), [
    ({}, 2.0, False),  # half_pixel, round_prefer_floor: the ONNX defaults
    ({"coordinate_transformation_mode": "asymmetric", "nearest_mode": "floor"}, 3.0, False),  # torch
    ({"coordinate_transformation_mode": "half_pixel"}, 3.0, True),
])
def test_upsample_reads_what_onnx_runtime_reads(attrs: dict[str, str], scale: float, sizes: bool) -> None:
    fp32 = _resize_model(attrs, scale, sizes)
    qdq, _ = quantize(fp32, HLS_PROFILE, random_feeds(fp32, 16, seed=1))
    program = lower(qdq, "resize")
    upsample = program.ops[-1]
    assert isinstance(upsample, UpsampleOp) and upsample.factors == (1, 1, int(scale), int(scale))
    per_op = per_op_with_ort(qdq, program, random_feeds(fp32, 4, seed=2))
    assert per_op["resize"]["max_lsb"] == 0, per_op


@pytest.mark.parametrize(("attrs", "why"), [
    ({"mode": "linear"}, "mode 'linear'"),
    ({"coordinate_transformation_mode": "asymmetric"}, r"does not read input index i // 3 on axis 2"),
])
def test_other_resizes_are_refused_naming_the_node(attrs: dict[str, str], why: str) -> None:
    fp32 = _resize_model({}, 3.0)
    for node in fp32.graph.node:
        if node.op_type == "Resize":
            kept = [a for a in node.attribute if a.name not in attrs]
            del node.attribute[:]
            node.attribute.extend([*kept, *(helper.make_attribute(k, v) for k, v in attrs.items())])
    qdq, _ = quantize(fp32, HLS_PROFILE, random_feeds(fp32, 16, seed=1))
    with pytest.raises(UnsupportedError, match=rf"node 'resize' \(Resize\): .*{why}"):
        lower(qdq, "resize")


@needs_gcc
def test_softmax_over_the_channel_axis_is_bit_exact(tmp_path: Path) -> None:
    """A Softmax over axis 1 of an NCHW map (a segmentation head's classes; YOLOv8's DFL bins): each row
    is the channel values of one pixel, ``stride`` apart in the C."""
    rng = np.random.default_rng(2)
    inits = {"w": _w(rng, 6, 3, 3, 3), "b": _w(rng, 6), "w2": _w(rng, 4, 6, 1, 1), "b2": _w(rng, 4)}
    nodes = [helper.make_node("Conv", ["x", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Softmax", ["c"], ["p"], name="softmax", axis=1),
             helper.make_node("Conv", ["p", "w2", "b2"], ["y"], name="head")]
    fp32 = make_model(nodes, {"x": ["N", 3, 5, 5]}, {"y": ["N", 4, 5, 5]}, inits)
    qdq, plan = quantize(fp32, HLS_PROFILE, random_feeds(fp32, 32, seed=1))
    program = lower(qdq, "seg")
    softmax = next(op for op in program.ops if op.node == "softmax")
    assert isinstance(softmax, SoftmaxOp) and (softmax.length, softmax.stride) == (6, 25)
    per_op = per_op_with_ort(qdq, program, random_feeds(fp32, 4, seed=2))
    assert max(s["max_lsb"] for s in per_op.values()) <= 1, per_op
    result = emit(Case("seg", fp32, qdq, plan, random_feeds(fp32, 8, seed=3)), tmp_path, tb_vectors=8)
    assert result.metrics["hls"]["csim"]["status"] == "bit-exact"
