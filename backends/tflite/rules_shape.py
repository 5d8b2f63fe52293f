"""Data movement: Reshape/Flatten/Squeeze/Unsqueeze, Transpose, Concat, Gather, Slice, Identity.

These move integers without changing them, so an int8 input gives an int8 output with the same
parameters (TFLite requires it); a following QuantizeLinear with other parameters requantizes.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import onnx_graphsurgeon as gs

from .graph import QParams
from .patterns import real_readers
from .rulebook import rule
from .rules_common import const_ints, optional, unsupported
from .rules_math import common_layout
from .schema import options

if TYPE_CHECKING:
    from .lowerer import Lowerer

NHWC_AXIS = (0, 3, 1, 2)      # ONNX NCHW axis → its position in NHWC
NHWC_TO_NCHW = (0, 3, 1, 2)


def _passthrough_out(lw: Lowerer, node: gs.Node, src: int, layout: str,
                     chw: tuple[int, int, int] | None = None, result: gs.Tensor | None = None) -> int:
    t = lw.g.tensors[src]
    return lw.output(node, None, layout, t.dtype, t.quant, result=result, chw=chw)


def _feeds_fc_only(lw: Lowerer, tensor: gs.Tensor) -> bool:
    readers, _ = real_readers(tensor)
    if not readers or any(o is tensor for o in lw.onnx.outputs):
        return False
    for r in readers:
        w = r.inputs[1] if len(r.inputs) > 1 else None
        ok_gemm = r.op == "Gemm" and not r.attrs.get("transA", 0)
        ok_matmul = r.op == "MatMul" and w is not None and lw.is_const(w) and len(lw.onnx_shape(w)) == 2
        if not (ok_gemm or ok_matmul) or w is None or not lw.is_const(w) or r.inputs[0] is w:
            return False
    return True


def _same_memory_order(shape: tuple[int, ...]) -> bool:
    """An NCHW shape whose NHWC form has the same element order (C == 1 or H·W == 1)."""
    return len(shape) == 4 and (shape[1] == 1 or shape[2] * shape[3] == 1)


def _flatten_into_fc(lw: Lowerer, node: gs.Node, in_shape: tuple[int, ...], out_shape: tuple[int, ...],
                     layout: str) -> bool:
    """A [N, …] → [N, K] flatten read only by FULLY_CONNECTED-bound nodes (2-D A, constant 2-D B)."""
    return (len(in_shape) == 4 and len(out_shape) == 2 and out_shape[0] == in_shape[0]
            and layout in ("plain", "nhwc") and _feeds_fc_only(lw, node.outputs[0]))


@rule("Reshape", "Flatten", "Squeeze", "Unsqueeze")
def reshape(lw: Lowerer, node: gs.Node) -> None:
    x, out = node.inputs[0], node.outputs[0]
    in_shape, out_shape = lw.onnx_shape(x), lw.onnx_shape(out)
    value = lw.value(x.name)
    layout, chw = "plain", None
    if _flatten_into_fc(lw, node, in_shape, out_shape, value.layout):
        # FULLY_CONNECTED (keepNumDims false) flattens its input itself, as the TFLite converter's files
        # do: no RESHAPE op (one XNNPACK copy fewer). NHWC with H·W > 1 flattens in HWC order: flat_hwc.
        nhwc_order = value.layout == "nhwc" and not _same_memory_order(in_shape)
        chw = (in_shape[1], in_shape[2], in_shape[3]) if nhwc_order else None
        layout = "flat_hwc" if nhwc_order else "plain"
        lw.values[out.name] = type(value)(value.tensor, layout, chw, value.edge)
        return
    if value.layout == "nhwc" and not _same_memory_order(in_shape):
        n, c, h, w = in_shape
        if out_shape == (n, c * h * w) and _feeds_fc_only(lw, out):
            layout, chw = "flat_hwc", (c, h, w)
        else:
            value = lw.to_layout(value, "plain")
    elif value.layout == "flat_hwc":
        value = lw.to_layout(value, "plain")
    src = value.tensor
    idx = _passthrough_out(lw, node, src, layout, chw)
    shape_t = lw.g.const(f"{node.name}_shape", np.asarray(out_shape, np.int32))
    lw.g.op("RESHAPE", [src, shape_t], [idx], options("RESHAPE", newShape=list(out_shape)), node.name)


@rule("Transpose")
def transpose(lw: Lowerer, node: gs.Node) -> None:
    x = node.inputs[0]
    rank = len(lw.onnx_shape(x))
    perm = [int(p) for p in node.attrs.get("perm", list(range(rank))[::-1])]
    value = lw.value(x.name)
    if value.layout == "nhwc":
        perm = [NHWC_TO_NCHW[p] for p in perm]
    elif value.layout == "flat_hwc":
        value = lw.to_layout(value, "plain")
    if perm == list(range(rank)):
        lw.values[node.outputs[0].name] = type(value)(value.tensor, "plain", None, value.edge)
        return
    idx = _passthrough_out(lw, node, value.tensor, "plain")
    perm_t = lw.g.const(f"{node.name}_perm", np.asarray(perm, np.int32))
    lw.g.op("TRANSPOSE", [value.tensor, perm_t], [idx], options("TRANSPOSE"), node.name)


@rule("Concat")
def concat(lw: Lowerer, node: gs.Node) -> None:
    rank = len(lw.onnx_shape(node.outputs[0]))
    axis = int(node.attrs["axis"]) % rank
    names = [t.name for t in node.inputs]
    moving = [t.name for t in node.inputs if not lw.is_const(t)]  # a ViT's class token is constant
    layout = common_layout(lw, moving, rank)
    target = lw.target(node, moving)
    ins = [_constant_part(lw, node, t, layout, target.quant if target else None) if lw.is_const(t)
           else lw.int8_in(t.name, layout) if target else lw.float_in(t.name, layout) for t in node.inputs]
    if target:
        for i, idx in enumerate(ins):
            if not target.quant.same_as(lw.g.tensors[idx].quant):  # TFLite int8 concat does not rescale
                requant = lw.g.like(idx, f"{lw.g.tensors[idx].name}_requantized", "int8", target.quant)
                lw.g.op("QUANTIZE", [idx], [requant], origin=node.name)
                lw.stats.requantize.append(f"{node.name}: input {names[i]} rescaled to the output scale")
                ins[i] = requant
    out = lw.output(node, target, layout)
    tfl_axis = NHWC_AXIS[axis] if layout == "nhwc" else axis
    lw.g.op("CONCATENATION", ins, [out], options("CONCATENATION", axis=tfl_axis), node.name)


def _constant_part(lw: Lowerer, node: gs.Node, tensor: gs.Tensor, layout: str, quant: QParams | None) -> int:
    """A constant input of ``node``'s CONCATENATION in the output's layout: float, or int8 on the output's
    own grid (``quant``), where a constant stored int8 in the QDQ model already lies."""
    value = lw.const(tensor)
    if value is None:
        raise unsupported(node, f"input '{tensor.name}' is constant but its value cannot be read")
    value = value.reshape(lw.onnx_shape(tensor))
    if layout == "nhwc":
        value = value.transpose(0, 2, 3, 1)
    if quant is None:
        return lw.g.const(f"{node.name}_{tensor.name}", value.astype(np.float32), "float32")
    q = np.clip(np.rint(value / quant.scale[0]) + quant.zero_point[0], -128, 127).astype(np.int8)
    return lw.g.const(f"{node.name}_{tensor.name}", q, "int8", quant)


@rule("Identity", "Dropout")
def identity(lw: Lowerer, node: gs.Node) -> None:
    lw.values[node.outputs[0].name] = lw.value(node.inputs[0].name)


@rule("Gather")
def gather(lw: Lowerer, node: gs.Node) -> None:
    data, indices = node.inputs
    rank = len(lw.onnx_shape(data))
    axis = int(node.attrs.get("axis", 0)) % rank
    const_data = lw.const(data) if lw.is_const(data) else None
    if const_data is not None:
        table = lw.g.const(data.name, const_data.astype(np.float32), "float32")
        idx_in = lw.value(indices.name).tensor
        out = lw.output(node, None)
    else:
        value = lw.value(data.name)
        if value.layout != "plain":
            value = lw.to_layout(value, "plain")
        table = value.tensor
        const_idx = lw.const(indices)
        if const_idx is None:
            raise unsupported(node, "both data and indices are computed at run time")
        idx_in = lw.g.const(f"{node.name}_indices", np.asarray(const_idx, np.int32))
        out = _passthrough_out(lw, node, table, "plain")
    lw.g.op("GATHER", [table, idx_in], [out], options("GATHER", axis=axis), node.name)


@rule("Slice")
def slice_(lw: Lowerer, node: gs.Node) -> None:
    x = node.inputs[0]
    shape = lw.onnx_shape(x)
    rank = len(shape)
    starts, ends = const_ints(optional(node, 1)), const_ints(optional(node, 2))
    axes = const_ints(optional(node, 3)) or list(range(len(starts or [])))
    steps = const_ints(optional(node, 4)) or [1] * len(axes)
    if starts is None or ends is None or any(s <= 0 for s in steps):
        raise unsupported(node, "only constant, positive-step slices map to STRIDED_SLICE")
    begin, end, stride = [0] * rank, list(shape), [1] * rank
    for a, s0, e0, st in zip(axes, starts, ends, steps, strict=True):
        a %= rank
        begin[a] = max(0, min(s0 + shape[a] if s0 < 0 else s0, shape[a]))
        end[a] = max(0, min(e0 + shape[a] if e0 < 0 else e0, shape[a]))
        stride[a] = st
    value = lw.value(x.name)
    if value.layout == "nhwc":
        begin, end, stride = ([v[p] for p in (0, 2, 3, 1)] for v in (begin, end, stride))
    elif value.layout == "flat_hwc":
        value = lw.to_layout(value, "plain")
    consts = [lw.g.const(f"{node.name}_{k}", np.asarray(v, np.int32))
              for k, v in (("begin", begin), ("end", end), ("strides", stride))]
    out = _passthrough_out(lw, node, value.tensor, value.layout)
    lw.g.op("STRIDED_SLICE", [value.tensor, *consts], [out], options("STRIDED_SLICE"), node.name)


@rule("Split")
def split(lw: Lowerer, node: gs.Node) -> None:
    """SPLIT_V along one axis; every output keeps the input's type and quantization (it moves integers)."""
    x = node.inputs[0]
    rank = len(lw.onnx_shape(x))
    axis = int(node.attrs.get("axis", 0)) % rank
    outputs = [o for o in node.outputs if o.name]
    if len(outputs) != len(node.outputs):
        raise unsupported(node, "an unnamed (dropped) Split output")
    sizes = [lw.onnx_shape(o)[axis] for o in outputs]
    value = lw.value(x.name)
    if value.layout == "flat_hwc":
        value = lw.to_layout(value, "plain")
    tfl_axis = NHWC_AXIS[axis] if value.layout == "nhwc" else axis
    outs = [_passthrough_out(lw, node, value.tensor, value.layout, result=o) for o in outputs]
    sizes_t = lw.g.const(f"{node.name}_sizes", np.asarray(sizes, np.int32))
    axis_t = lw.g.const(f"{node.name}_axis", np.asarray(tfl_axis, np.int32))
    lw.g.op("SPLIT_V", [value.tensor, sizes_t, axis_t], outs, options("SPLIT_V", numSplits=len(outs)),
            node.name)
