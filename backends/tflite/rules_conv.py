"""Spatial ops on NHWC: Conv (CONV_2D / DEPTHWISE_CONV_2D), ConvTranspose, pooling, Pad, Resize."""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.op_kinds import ceil_mode_pads

from .rulebook import rule
from .rules_common import (
    const_ints,
    float_bias,
    float_weight,
    fuse_activation,
    int8_weight,
    int32_bias,
    ints,
    optional,
    pad_nhwc,
    same_pads,
    spatial_padding,
    unsupported,
)
from .schema import options

if TYPE_CHECKING:
    from .lowerer import Lowerer

_PADDING = {"SAME": 0, "VALID": 1}


def _check_out(lw: Lowerer, node: gs.Node, in_hw: tuple[int, int], k: tuple[int, int], s: tuple[int, int],
               d: tuple[int, int], padding: str, pads: list[int] | None) -> None:
    """The TFLite output size must equal ONNX's (catches ceil_mode and odd paddings)."""
    want = lw.onnx_shape(node.outputs[0])[2:]
    got = []
    for i in range(2):
        size = in_hw[i] + (pads[i] + pads[i + 2] if pads else 0)
        keff = (k[i] - 1) * d[i] + 1
        got.append(-(-in_hw[i] // s[i]) if padding == "SAME" else (size - keff) // s[i] + 1)
    if tuple(got) != tuple(want):
        raise unsupported(node, f"output size {tuple(want)} has no TFLite padding equivalent "
                                f"(got {tuple(got)})")


@rule("Conv")
def conv(lw: Lowerer, node: gs.Node) -> None:
    x, w, b = node.inputs[0], node.inputs[1], optional(node, 2)
    x_shape, w_shape = lw.onnx_shape(x), lw.onnx_shape(w)
    if len(x_shape) != 4:
        raise unsupported(node, f"{len(x_shape) - 2}-D convolution; TFLite CONV_2D is 2-D only")
    group, cin, cout = int(node.attrs.get("group", 1)), x_shape[1], w_shape[0]
    depthwise = group > 1 and group == cin and w_shape[1] == 1
    # other groups: CONV_2D with filter [cout, kh, kw, cin / group]; TFLite reads the group count from the
    # input's channels over the filter's (LiteRT >= 2.9 kernels and XNNPACK run it)
    k = (w_shape[2], w_shape[3])
    s = tuple(ints(node, "strides", [1, 1]))
    d = tuple(ints(node, "dilations", [1, 1]))
    padding, pads = spatial_padding(node, (x_shape[2], x_shape[3]), k, s, d)  # type: ignore[arg-type]
    _check_out(lw, node, (x_shape[2], x_shape[3]), k, s, d, padding, pads)  # type: ignore[arg-type]
    target = lw.target(node, [x.name]) if w.name in lw.qconst else None
    x_idx = lw.int8_in(x.name, "nhwc") if target else lw.float_in(x.name, "nhwc")
    if pads:
        x_idx = pad_nhwc(lw, x_idx, pads, node)
    perm = (1, 2, 3, 0) if depthwise else (0, 2, 3, 1)
    if target:
        w_idx = int8_weight(lw, w, node, perm)
        b_idx = int32_bias(lw, b, node, x_idx, w_idx, cout)
    else:
        w_idx, b_idx = float_weight(lw, w, node, perm), float_bias(lw, b, node, cout)
    out = lw.output(node, target, "nhwc")
    common = {"padding": _PADDING[padding], "strideH": s[0], "strideW": s[1],
              "dilationHFactor": d[0], "dilationWFactor": d[1]}
    if depthwise:
        opts = options("DEPTHWISE_CONV_2D", depthMultiplier=cout // cin, **common)
        op = lw.g.op("DEPTHWISE_CONV_2D", [x_idx, w_idx, b_idx], [out], opts, node.name)
    else:
        op = lw.g.op("CONV_2D", [x_idx, w_idx, b_idx], [out], options("CONV_2D", **common), node.name)
    fuse_activation(lw, node, op)


@rule("ConvTranspose")
def conv_transpose(lw: Lowerer, node: gs.Node) -> None:
    x, w, b = node.inputs[0], node.inputs[1], optional(node, 2)
    x_shape, w_shape = lw.onnx_shape(x), lw.onnx_shape(w)
    out_shape = lw.onnx_shape(node.outputs[0])
    if len(x_shape) != 4 or int(node.attrs.get("group", 1)) != 1:
        raise unsupported(node, "only 2-D, group-1 transposed convolution maps to TRANSPOSE_CONV")
    if any(v != 1 for v in ints(node, "dilations", [1, 1])) or any(ints(node, "output_padding", [0, 0])):
        raise unsupported(node, "dilation or output_padding in a transposed convolution")
    k, s = (w_shape[2], w_shape[3]), tuple(ints(node, "strides", [1, 1]))
    pads = ints(node, "pads", [0, 0, 0, 0])
    padding = None
    if not any(pads) and all(out_shape[2 + i] == (x_shape[2 + i] - 1) * s[i] + k[i] for i in range(2)):
        padding = "VALID"
    total = [k[i] - s[i] for i in range(2)]
    if all(out_shape[2 + i] == x_shape[2 + i] * s[i] and (pads[i], pads[i + 2]) ==
           (total[i] // 2, total[i] - total[i] // 2) for i in range(2)):
        padding = "SAME"
    if padding is None:
        raise unsupported(node, f"pads {pads} have no TFLite SAME/VALID equivalent")
    target = lw.target(node, [x.name]) if w.name in lw.qconst else None
    x_idx = lw.int8_in(x.name, "nhwc") if target else lw.float_in(x.name, "nhwc")
    cout = w_shape[1]
    if target:
        w_idx = int8_weight(lw, w, node, (1, 2, 3, 0))
        b_idx = int32_bias(lw, b, node, x_idx, w_idx, cout)
    else:
        w_idx, b_idx = float_weight(lw, w, node, (1, 2, 3, 0)), float_bias(lw, b, node, cout)
    out = lw.output(node, target, "nhwc")
    shape = lw.g.const(f"{node.name}_output_shape", np.asarray(lw.g.tensors[out].shape, np.int32))
    opts = options("TRANSPOSE_CONV", padding=_PADDING[padding], strideH=s[0], strideW=s[1])
    lw.g.op("TRANSPOSE_CONV", [shape, w_idx, x_idx, b_idx], [out], opts, node.name)


@rule("MaxPool", "AveragePool")
def pool(lw: Lowerer, node: gs.Node) -> None:
    x = node.inputs[0]
    x_shape = lw.onnx_shape(x)
    if len(x_shape) != 4 or (len(node.outputs) > 1 and node.outputs[1].name):
        raise unsupported(node, "only 2-D pooling without indices maps to TFLite pooling")
    if any(v != 1 for v in ints(node, "dilations", [1, 1])):
        raise unsupported(node, "dilated pooling")
    k = tuple(ints(node, "kernel_shape", []))
    s = tuple(ints(node, "strides", [1, 1]))
    padding, pads = spatial_padding(node, (x_shape[2], x_shape[3]), k, s, (1, 1))  # type: ignore[arg-type]
    is_max = node.op == "MaxPool"
    if is_max and node.attrs.get("ceil_mode", 0):
        hw = (x_shape[2], x_shape[3])
        if padding == "SAME" and pads is None:
            (top, bottom), (left, right) = (same_pads(hw[i], k[i], s[i], 1) for i in range(2))
            pads = [top, left, bottom, right]
        padding, pads = "VALID", list(ceil_mode_pads(hw, k, s, pads or [0, 0, 0, 0]))
    if node.op == "AveragePool" and padding == "SAME" and node.attrs.get("count_include_pad", 0):
        padding, pads = "VALID", ints(node, "pads", [0, 0, 0, 0])
    if pads and not is_max and not node.attrs.get("count_include_pad", 0):
        raise unsupported(node, f"pads {pads} excluded from the average have no TFLite equivalent")
    _check_out(lw, node, (x_shape[2], x_shape[3]), k, s, (1, 1), padding, pads)  # type: ignore[arg-type]
    kind = "MAX_POOL_2D" if is_max else "AVERAGE_POOL_2D"
    int8 = lw.is_int8(x.name)
    x_idx = lw.int8_in(x.name, "nhwc") if int8 else lw.float_in(x.name, "nhwc")
    if pads:
        x_idx = pad_nhwc(lw, x_idx, pads, node, fill_lowest=is_max)
    quant = lw.g.tensors[x_idx].quant
    out = lw.output(node, None, "nhwc", "int8" if int8 else "float32", quant)
    opts = options(kind, padding=_PADDING[padding], strideH=s[0], strideW=s[1], filterHeight=k[0],
                   filterWidth=k[1])
    op = lw.g.op(kind, [x_idx], [out], opts, node.name)
    fuse_activation(lw, node, op)


@rule("GlobalAveragePool", "GlobalMaxPool")
def global_pool(lw: Lowerer, node: gs.Node) -> None:
    x = node.inputs[0]
    if len(lw.onnx_shape(x)) != 4:
        raise unsupported(node, "only 4-D global pooling")
    axes = lw.g.const(f"{node.name}_axes", np.asarray([1, 2], np.int32))
    if node.op == "GlobalMaxPool":
        int8 = lw.is_int8(x.name)
        x_idx = lw.int8_in(x.name, "nhwc") if int8 else lw.float_in(x.name, "nhwc")
        out = lw.output(node, None, "nhwc", "int8" if int8 else "float32", lw.g.tensors[x_idx].quant)
        lw.g.op("REDUCE_MAX", [x_idx, axes], [out], options("MEAN", keepDims=True), node.name)
        return
    target = lw.target(node, [x.name])
    x_idx = lw.int8_in(x.name, "nhwc") if target else lw.float_in(x.name, "nhwc")
    out = lw.output(node, target, "nhwc")
    lw.g.op("MEAN", [x_idx, axes], [out], options("MEAN", keepDims=True), node.name)


@rule("Pad")
def pad(lw: Lowerer, node: gs.Node) -> None:
    x = node.inputs[0]
    mode = node.attrs.get("mode", "constant")
    mode = mode.decode() if isinstance(mode, bytes) else mode
    pads = const_ints(optional(node, 1)) if "pads" not in node.attrs else ints(node, "pads", [])
    value = lw.const(node.inputs[2]) if optional(node, 2) is not None else np.float32(0)
    if mode != "constant" or pads is None or value is None or float(value) != 0.0 or optional(node, 3):
        raise unsupported(node, "only constant zero padding with constant pads maps to PAD")
    rank = len(lw.onnx_shape(x))
    pairs = [[pads[i], pads[i + rank]] for i in range(rank)]
    int8 = lw.is_int8(x.name)
    layout = lw.value(x.name).layout if lw.value(x.name).layout != "flat_hwc" else "plain"
    if layout == "nhwc":
        pairs = [pairs[p] for p in (0, 2, 3, 1)]
    x_idx = lw.int8_in(x.name, layout) if int8 else lw.float_in(x.name, layout)
    paddings = lw.g.const(f"{node.name}_paddings", np.asarray(pairs, np.int32))
    out = lw.output(node, None, layout, "int8" if int8 else "float32", lw.g.tensors[x_idx].quant)
    lw.g.op("PAD", [x_idx, paddings], [out], options("PAD"), node.name)


@rule("Resize", "Upsample")
def resize(lw: Lowerer, node: gs.Node) -> None:
    x = node.inputs[0]
    if len(lw.onnx_shape(x)) != 4:
        raise unsupported(node, "only 4-D resize")
    attr = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in node.attrs.items()}
    mode, coord = attr.get("mode", "nearest"), attr.get("coordinate_transformation_mode", "half_pixel")
    nearest = attr.get("nearest_mode", "round_prefer_floor")
    if mode == "linear" and coord in ("half_pixel", "pytorch_half_pixel", "align_corners", "asymmetric"):
        half_pixel = coord in ("half_pixel", "pytorch_half_pixel")
        kind, flags = "RESIZE_BILINEAR", (coord == "align_corners", half_pixel)
    elif mode == "nearest" and (coord, nearest) == ("asymmetric", "floor"):
        kind, flags = "RESIZE_NEAREST_NEIGHBOR", (False, False)
    elif mode == "nearest" and (coord, nearest) == ("half_pixel", "round_prefer_ceil"):
        kind, flags = "RESIZE_NEAREST_NEIGHBOR", (False, True)
    else:
        raise unsupported(node, f"mode {mode} with {coord}/{nearest} has no TFLite resize equivalent")
    int8 = lw.is_int8(x.name)
    x_idx = lw.int8_in(x.name, "nhwc") if int8 else lw.float_in(x.name, "nhwc")
    out = lw.output(node, None, "nhwc", "int8" if int8 else "float32", lw.g.tensors[x_idx].quant)
    size = lw.g.const(f"{node.name}_size", np.asarray(lw.g.tensors[out].shape[1:3], np.int32))
    opts = options(kind, alignCorners=flags[0], halfPixelCenters=flags[1])
    lw.g.op(kind, [x_idx, size], [out], opts, node.name)
