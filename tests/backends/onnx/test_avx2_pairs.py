"""``avx2_pairs``: ORT's u8s8 kernel without VNNI, modelled here by brute force, and the per-channel
weight limits that keep its int16 pair sums from saturating."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.backends.onnx.avx2_pairs import CANDIDATES, conv_index_ranges, conv_weight_rows, safe_limits
from dsqc.backends.onnx.isa import host_isa

X_SCALE, W_SCALE, Y_SCALE, X_ZERO, Y_ZERO = 2.0**-6, 2.0**-7, 2.0**-3, 10, 128  # exact requantization


@dataclass(frozen=True)
class Shape:
    kernel: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    dilations: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    group: int = 1


SHAPES = [Shape((3, 3), pads=(1, 1, 1, 1)),
          Shape((3, 3), strides=(2, 2), pads=(0, 1, 1, 0)),
          Shape((2, 3), dilations=(2, 1), group=2),
          Shape((1, 1))]


def _kernel(codes: np.ndarray, weight: np.ndarray, shape: Shape, saturate: bool) -> np.ndarray:
    """The kernel by brute force: per output, u8·s8 products over (kh, kw, c) of its group in pairs,
    each pair clipped to int16 when ``saturate``, summed; minus zero point · Σw. Padding reads the zero
    point."""
    n, c, h, w = codes.shape
    top, left, bottom, right = shape.pads
    x = np.full((n, c, h + top + bottom, w + left + right), X_ZERO, np.int64)
    x[:, :, top:top + h, left:left + w] = codes
    (kh, kw), (sh, sw), (dh, dw), g = shape.kernel, shape.strides, shape.dilations, shape.group
    ho, wo = (x.shape[2] - dh * (kh - 1) - 1) // sh + 1, (x.shape[3] - dw * (kw - 1) - 1) // sw + 1
    cg, og = c // g, weight.shape[0] // g
    out = np.zeros((n, weight.shape[0], ho, wo), np.int64)
    for b in range(n):
        for o in range(weight.shape[0]):
            f = o // og * cg
            for i in range(ho):
                for j in range(wo):
                    terms = [int(x[b, f + ci, i * sh + a * dh, j * sw + e * dw]) * int(weight[o, ci, a, e])
                             for a in range(kh) for e in range(kw) for ci in range(cg)]
                    terms += [0] * (len(terms) % 2)
                    pairs = np.add(terms[0::2], terms[1::2])
                    acc = np.clip(pairs, -32768, 32767).sum() if saturate else pairs.sum()
                    out[b, o, i, j] = acc - X_ZERO * int(weight[o].astype(np.int64).sum())
    return out


def _qdq_conv(weight: np.ndarray, shape: Shape, x_shape: list[int]) -> onnx.ModelProto:
    out = weight.shape[0]
    nodes = [helper.make_node("DequantizeLinear", ["x", "xs", "xz"], ["xd"]),
             helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], axis=0),
             helper.make_node("Conv", ["xd", "wd"], ["y"], kernel_shape=list(shape.kernel),
                              strides=list(shape.strides), dilations=list(shape.dilations),
                              pads=list(shape.pads), group=shape.group),
             helper.make_node("QuantizeLinear", ["y", "ys", "yz"], ["yq"])]
    inits = [numpy_helper.from_array(np.array(X_SCALE, np.float32), "xs"),
             numpy_helper.from_array(np.array(X_ZERO, np.uint8), "xz"),
             numpy_helper.from_array(weight, "w"),
             numpy_helper.from_array(np.full(out, W_SCALE, np.float32), "ws"),
             numpy_helper.from_array(np.zeros(out, np.int8), "wz"),
             numpy_helper.from_array(np.array(Y_SCALE, np.float32), "ys"),
             numpy_helper.from_array(np.array(Y_ZERO, np.uint8), "yz")]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", TensorProto.UINT8, x_shape)],
                              [helper.make_tensor_value_info("yq", TensorProto.UINT8, None)], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


@pytest.mark.parametrize("shape", SHAPES)
def test_the_kernel_model_is_what_ort_computes_on_this_cpu(shape: Shape) -> None:
    """ORT's fused QLinearConv equals the brute-force kernel bit for bit: with int16 pair saturation on an
    AVX2 CPU without VNNI, exact int32 sums elsewhere (VNNI, AMX, ARM). The inputs make saturation
    change the result, so the pairing order is what is checked."""
    rng = np.random.default_rng(2)
    codes = rng.integers(150, 256, size=(1, 8, 7, 7)).astype(np.uint8)
    weight = rng.integers(-127, 128, size=(6, 8 // shape.group, *shape.kernel)).astype(np.int8)
    session = ort.InferenceSession(_qdq_conv(weight, shape, list(codes.shape)).SerializeToString(),
                                   providers=["CPUExecutionProvider"])
    fused = session.run(None, {"x": codes})[0].astype(np.int64)
    saturated, exact = _kernel(codes, weight, shape, True), _kernel(codes, weight, shape, False)
    assert np.any(saturated != exact)
    acc = saturated if host_isa() == "avx2" else exact
    expected = np.clip(np.round(acc * (X_SCALE * W_SCALE / Y_SCALE)) + Y_ZERO, 0, 255)
    np.testing.assert_array_equal(fused, expected)


@pytest.mark.parametrize("shape", SHAPES)
def test_safe_limits_never_saturate_within_the_ranges(shape: Shape) -> None:
    """Codes at the corners of each input channel's range (the worst case for a pair) saturate nothing
    with the limits ``safe_limits`` picks, through the reduction order of ``conv_weight_rows`` and
    ``conv_index_ranges``; some channels are wider than 7 bits and some are held back."""
    rng = np.random.default_rng(4)
    channels = 8
    low = rng.integers(0, X_ZERO + 1, size=channels)
    high = rng.integers(60, 256, size=channels)
    high[0] = 255
    weight = rng.normal(size=(6, channels // shape.group, *shape.kernel))
    weight[1] = np.abs(weight[1]) + 2.0  # one output channel whose pairs all hold two large weights
    limits = safe_limits(conv_index_ranges(low, high, weight.shape, shape.group),
                         conv_weight_rows(weight, shape.group))
    assert set(limits.tolist()) <= set(CANDIDATES) and limits.max() > 64 and limits[1] < 127
    amax = np.abs(weight).reshape(len(weight), -1).max(axis=1)
    q = np.round(weight / (amax / limits)[:, None, None, None]).astype(np.int64)
    corners = rng.integers(0, 2, size=(4, channels, 7, 7)).astype(bool)
    codes = np.where(corners, high[None, :, None, None], low[None, :, None, None])
    np.testing.assert_array_equal(_kernel(codes, q, shape, True), _kernel(codes, q, shape, False))


def test_small_codes_take_eight_bits_and_full_codes_keep_the_safe_seven() -> None:
    rng = np.random.default_rng(3)
    weight = rng.normal(size=(3, 64))
    small = (np.zeros(64), np.full(64, 60.0))  # 60 · 254 < 32767: nothing can saturate
    full = (np.zeros(64), np.full(64, 255.0))
    assert safe_limits([small], [weight]).tolist() == [127, 127, 127]
    pairs_of_peaks = np.ones((1, 64))  # every pair holds two weights at the channel's maximum
    assert safe_limits([full], [pairs_of_peaks]).tolist() == [64]
