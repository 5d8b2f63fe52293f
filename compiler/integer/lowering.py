"""One lowering function per supported ONNX op: float node between DQ and Q → integer op."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.errors import UnsupportedError
from dsqc.integer.context import Lowering
from dsqc.integer.fixedpoint import common_multipliers, mult_bits, quantize_multiplier
from dsqc.integer.ops import (
    AddOp,
    ConcatOp,
    ConvOp,
    DenseOp,
    ElementwiseOp,
    LookupOp,
    MatMulOp,
    MulOp,
    Op,
    PoolOp,
    Requant,
    SliceOp,
    SoftmaxOp,
    TensorInfo,
    TransposeOp,
    UpsampleOp,
)
from dsqc.ir import constant_value
from dsqc.op_kinds import ceil_mode_pads, weight_output_axis

_ACC32 = 2**31 - 1
_ACC_EXACT = 2**52  # the reference sums products in float64: exact below 2^53


def _fail(node: gs.Node, why: str) -> UnsupportedError:
    return UnsupportedError(f"node '{node.name}' ({node.op}): {why}")


def requant_to(node: gs.Node, reals: np.ndarray, out: TensorInfo, qmin: int | None = None,
             qmax: int | None = None, acc_bound: int = _ACC32) -> Requant:
    """The requantization to ``out`` of values up to ``acc_bound`` in magnitude (their multipliers get
    fewer bits where that bound is wider than int32, so that the product fits int64)."""
    lo = out.qmin if qmin is None else qmin
    hi = out.qmax if qmax is None else qmax
    if reals.size == 1 and float(reals.reshape(())) == 1.0:
        return Requant(np.ones(1, np.int64), np.zeros(1, np.int64), out.zero_point, lo, hi, identity=True)
    bits = mult_bits(acc_bound)
    mults = [quantize_multiplier(float(r), f"node '{node.name}'", bits) for r in reals.reshape(-1)]
    return Requant.build(mults, out.zero_point, lo, hi)


def _acc_bound(node: gs.Node, weight: np.ndarray, bias: np.ndarray, x: TensorInfo) -> int:
    """The largest |acc| = |Σ (x − zp)·w + b| any output channel can reach: above int32 (int16 inputs)
    the accumulator is int64."""
    worst = np.abs(weight.reshape(weight.shape[0], -1)).sum(axis=1) * x.span + np.abs(bias)
    bound = int(worst.max(initial=0))
    if bound > _ACC_EXACT:
        raise _fail(node, "the accumulator could exceed 2^52 (reduction too long)")
    return bound


def _pair(values: object, default: int, node: gs.Node, what: str) -> tuple[int, int]:
    seq = [int(v) for v in values] if values is not None else [default, default]  # type: ignore[attr-defined]
    if len(seq) != 2:
        raise _fail(node, f"only 2-D {what} are supported, got {seq}")
    return seq[0], seq[1]


def _pads(node: gs.Node) -> tuple[int, int, int, int]:
    if node.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", "VALID"):
        raise _fail(node, f"auto_pad={node.attrs['auto_pad']} is not supported (use explicit pads)")
    pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
    if len(pads) != 4:
        raise _fail(node, f"only 2-D pads are supported, got {pads}")
    return pads[0], pads[1], pads[2], pads[3]


def _spatial(size: int, kernel: int, stride: int, pad: int, dilation: int = 1) -> int:
    return (size + pad - dilation * (kernel - 1) - 1) // stride + 1


def lower_conv(ctx: Lowering, node: gs.Node) -> Op:
    x = ctx.act(node, 0)
    if len(x.shape) != 4:
        raise _fail(node, f"only 2-D convolution on NCHW is supported (input shape {x.shape})")
    weight, w_scale = ctx.weight(node, 1, channel_axis=weight_output_axis(node))
    group = int(node.attrs.get("group", 1))
    oc, icg, kh, kw = weight.shape
    if x.shape[1] != icg * group or oc % group:
        raise _fail(node, f"weight {weight.shape} does not match input {x.shape} with group {group}")
    strides = _pair(node.attrs.get("strides"), 1, node, "strides")
    dilations = _pair(node.attrs.get("dilations"), 1, node, "dilations")
    pads = _pads(node)
    oh = _spatial(x.shape[2], kh, strides[0], pads[0] + pads[2], dilations[0])
    ow = _spatial(x.shape[3], kw, strides[1], pads[1] + pads[3], dilations[1])
    out = ctx.output(node, (1, oc, oh, ow))
    bias = ctx.bias(node, 2, x.scale * w_scale)
    bound = _acc_bound(node, weight, bias, x)
    requant = requant_to(node, x.scale * w_scale / out.scale, out, acc_bound=bound)
    return ConvOp(node.name, node.op, [x.name], out.name, weight=weight.astype(np.int8),
                  bias=bias.astype(np.int32), acc64=bound > _ACC32, strides=strides, pads=pads,
                  dilations=dilations, group=group, in_zp=x.zero_point, requant=requant)


def lower_dense(ctx: Lowering, node: gs.Node, bias_add: gs.Node | None = None) -> Op:
    """Gemm on [1, K]; MatMul by a constant [K, N] on [1, K] or on every row of [1, …, K], with the
    constant [N] of ``bias_add`` (the Add after it, one kernel with it) as its bias."""
    x = ctx.act(node, 0)
    if len(x.shape) < 2 or (node.op == "Gemm" and len(x.shape) != 2):
        raise _fail(node, f"needs a 2-D input [batch, K], got {x.shape} (insert a Flatten)")
    if node.op == "Gemm":
        if node.attrs.get("transA", 0) or node.attrs.get("alpha", 1.0) != 1.0:
            raise _fail(node, "transA or alpha != 1 is not supported")
        if len(node.inputs) > 2 and node.inputs[2].name and node.attrs.get("beta", 1.0) != 1.0:
            raise _fail(node, "beta != 1 is not supported")
    out_axis = weight_output_axis(node)
    weight, w_scale = ctx.weight(node, 1, channel_axis=out_axis)
    if weight.ndim != 2:
        raise _fail(node, f"needs a 2-D constant weight, got shape {weight.shape}")
    weight = weight if out_axis == 0 else weight.T
    if weight.shape[1] != x.shape[-1]:
        raise _fail(node, f"weight {weight.shape} does not match input {x.shape}")
    out = ctx.output(bias_add or node, (*x.shape[:-1], weight.shape[0]))
    if bias_add is not None:
        index = next(i for i, t in enumerate(bias_add.inputs) if constant_value(t) is not None)
        bias = ctx.bias(bias_add, index, x.scale * w_scale, noted=False)
        if bias.size != weight.shape[0]:
            raise _fail(bias_add, f"adds {bias.size} values to {weight.shape[0]} outputs: not a bias")
    elif node.op == "Gemm":
        bias = ctx.bias(node, 2, x.scale * w_scale)
    else:
        bias = np.zeros(weight.shape[0], np.int64)
    bound = _acc_bound(node, weight, bias, x)
    requant = requant_to(node, x.scale * w_scale / out.scale, out, acc_bound=bound)
    return DenseOp(node.name, node.op, [x.name], out.name, weight=np.ascontiguousarray(weight, np.int8),
                   bias=bias.astype(np.int32), acc64=bound > _ACC32, in_zp=x.zero_point, requant=requant)


def lower_matmul(ctx: Lowering, node: gs.Node) -> Op:
    """MatMul by a constant weight (``lower_dense``) or of two activations (``MatMulOp``)."""
    weight = node.inputs[1]
    dq = weight.inputs[0] if weight.inputs else None
    if dq is not None and dq.op == "DequantizeLinear" and constant_value(dq.inputs[0]) is not None:
        return lower_dense(ctx, node)
    a, b = ctx.act(node, 0), ctx.act(node, 1)
    if len(a.shape) < 2 or len(a.shape) != len(b.shape) or a.shape[:-2] != b.shape[:-2] or \
            a.shape[-1] != b.shape[-2]:
        raise _fail(node, f"{a.shape} × {b.shape}: two activations multiply as equal stacks of [M, K] × "
                          "[K, N] matrices only")
    rows, depth = a.shape[-2:]
    cols = b.shape[-1]
    out = ctx.output(node, (*a.shape[:-1], cols))
    bound = depth * a.span * b.span
    if bound > _ACC_EXACT:
        raise _fail(node, "the accumulator could exceed 2^52 (reduction too long)")
    requant = requant_to(node, np.array([a.scale * b.scale / out.scale]), out, acc_bound=bound)
    return MatMulOp(node.name, node.op, [a.name, b.name], out.name, in_zps=(a.zero_point, b.zero_point),
                    batch=int(np.prod(a.shape[:-2])), rows=rows, depth=depth, cols=cols,
                    acc64=bound > _ACC32, requant=requant)


def lower_add(ctx: Lowering, node: gs.Node) -> Op:
    a, b = ctx.act(node, 0), ctx.act(node, 1)
    if a.shape != b.shape:
        raise _fail(node, f"broadcasting {a.shape} + {b.shape} is not supported (equal shapes only)")
    out = ctx.output(node, a.shape)
    (ma, mb), n = common_multipliers([a.scale / out.scale, b.scale / out.scale], f"node '{node.name}'")
    requant = Requant(np.ones(1, np.int64), np.array([n], np.int64), out.zero_point, out.qmin, out.qmax)
    return AddOp(node.name, node.op, [a.name, b.name], out.name, in_zps=(a.zero_point, b.zero_point),
                 in_mults=(ma, mb), requant=requant)


def lower_mul(ctx: Lowering, node: gs.Node) -> Op:
    """Two int8 tensors of one shape, or a [1, C, 1, …] gate times a [1, C, …] map (either order)."""
    a, b = ctx.act(node, 0), ctx.act(node, 1)
    if _gate_of(a, b):
        a, b = b, a
    if a.shape != b.shape and not _gate_of(b, a):
        raise _fail(node, f"broadcasting {a.shape} * {b.shape} is not supported (equal shapes, or "
                          "[1, C, 1, …] times [1, C, …])")
    out = ctx.output(node, a.shape)
    bound = a.span * b.span
    requant = requant_to(node, np.array([a.scale * b.scale / out.scale]), out, acc_bound=bound)
    return MulOp(node.name, node.op, [a.name, b.name], out.name, in_zps=(a.zero_point, b.zero_point),
                 per_channel_b=a.shape != b.shape, wide=bound > _ACC32, requant=requant)


def _gate_of(gate: TensorInfo, x: TensorInfo) -> bool:
    """``gate`` is one value per channel of ``x`` (and ``x`` is more than that)."""
    return (len(gate.shape) == len(x.shape) > 2 and gate.shape[:2] == x.shape[:2]
            and all(d == 1 for d in gate.shape[2:]) and gate.shape != x.shape)


_TABLES: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "Sigmoid": lambda v: 1.0 / (1.0 + np.exp(-v)), "Tanh": np.tanh}


def lower_lookup(ctx: Lowering, node: gs.Node) -> Op:
    """The op on each of the 256 int8 codes, in float32 as ORT runs DQ → op → Q, then quantized to the
    output's type (int8 or int16)."""
    x = ctx.act(node, 0)
    if x.wide:
        raise _fail(node, f"input '{x.name}' is int16; the {node.op} table takes int8 inputs (256 codes)")
    out = ctx.output(node, x.shape)
    codes = np.arange(-128, 128, dtype=np.float32)
    real = (codes - np.float32(x.zero_point)) * np.float32(x.scale)
    with np.errstate(over="ignore"):
        value = _TABLES[node.op](real.astype(np.float32)).astype(np.float32)
    return LookupOp(node.name, node.op, [x.name], out.name, table=out.codes(value))


def lower_clamp(ctx: Lowering, node: gs.Node) -> Op:
    """Relu / Clip: requantize, then clamp to the quantized bounds (exact: rounding is monotone)."""
    x = ctx.act(node, 0)
    out = ctx.output(node, x.shape)
    lo, hi = _clip_bounds(ctx, node)
    qlo = out.qmin if lo is None else _quantize_bound(lo, out)
    qhi = out.qmax if hi is None else _quantize_bound(hi, out)
    requant = requant_to(node, np.array([x.scale / out.scale]), out, qlo, qhi)
    return ElementwiseOp(node.name, node.op, [x.name], out.name, in_zp=x.zero_point, requant=requant)


def _quantize_bound(value: float, out: TensorInfo) -> int:
    """A real clip bound in the output's integer domain (QuantizeLinear's rule: half to even)."""
    return int(out.codes(np.float32(value)))


def _clip_bounds(ctx: Lowering, node: gs.Node) -> tuple[float | None, float | None]:
    if node.op == "Relu":
        return 0.0, None
    if "min" in node.attrs or "max" in node.attrs:
        return node.attrs.get("min"), node.attrs.get("max")
    bounds: list[float | None] = []
    for i in (1, 2):
        has = len(node.inputs) > i and bool(node.inputs[i].name)
        bounds.append(float(ctx.constant(node, i).reshape(())) if has else None)
    return bounds[0], bounds[1]


def lower_pool(ctx: Lowering, node: gs.Node) -> Op:
    x = ctx.act(node, 0)
    if len(x.shape) != 4:
        raise _fail(node, f"only 2-D pooling on NCHW is supported (input shape {x.shape})")
    if node.op == "GlobalAveragePool":
        kernel, strides, pads = (x.shape[2], x.shape[3]), (1, 1), (0, 0, 0, 0)
    else:
        ceil = bool(node.attrs.get("ceil_mode", 0))
        if node.attrs.get("storage_order", 0) or (ceil and node.op != "MaxPool"):
            raise _fail(node, "storage_order, and ceil_mode on an AveragePool, are not supported")
        if any(int(d) != 1 for d in node.attrs.get("dilations", [1, 1])):
            raise _fail(node, "dilated pooling is not supported")
        kernel = _pair(node.attrs.get("kernel_shape"), 1, node, "kernels")
        strides = _pair(node.attrs.get("strides"), 1, node, "strides")
        pads = ceil_mode_pads(x.shape[2:], kernel, strides, _pads(node)) if ceil else _pads(node)
    mode = "max" if node.op == "MaxPool" else "avg"
    if mode == "avg" and any(pads) and not node.attrs.get("count_include_pad", 0):
        raise _fail(node, "padded AveragePool needs count_include_pad=1 (one divisor per layer)")
    oh = _spatial(x.shape[2], kernel[0], strides[0], pads[0] + pads[2])
    ow = _spatial(x.shape[3], kernel[1], strides[1], pads[1] + pads[3])
    out = ctx.output(node, (1, x.shape[1], oh, ow))
    window = 1 if mode == "max" else kernel[0] * kernel[1]
    requant = requant_to(node, np.array([x.scale / (out.scale * window)]), out, acc_bound=x.span * window)
    return PoolOp(node.name, node.op, [x.name], out.name, mode=mode, kernel=kernel, strides=strides,
                  pads=pads, in_zp=x.zero_point, requant=requant)


def lower_reshape(ctx: Lowering, node: gs.Node) -> Op:
    x = ctx.act(node, 0)
    if node.op == "Flatten":
        axis = int(node.attrs.get("axis", 1)) % max(len(x.shape), 1)
        if axis == 0:
            raise _fail(node, "Flatten over the batch axis is not supported")
        shape: tuple[int, ...] = (int(np.prod(x.shape[:axis])), int(np.prod(x.shape[axis:])))
    elif node.op in ("Squeeze", "Unsqueeze"):
        shape = _squeezed(ctx, node, x.shape)
    else:
        target = ctx.constant(node, 1).astype(np.int64).tolist()
        if node.attrs.get("allowzero", 0) and 0 in target:
            raise _fail(node, "allowzero with a 0 in the shape is not supported")
        target = [x.shape[i] if d == 0 else d for i, d in enumerate(target)]
        try:
            shape = tuple(int(d) for d in np.empty(x.shape, np.int8).reshape(target).shape)
        except ValueError as exc:
            raise _fail(node, f"cannot reshape {x.shape} to {target}") from exc
    if not shape:
        raise _fail(node, "reshape to a scalar is not supported")
    out = ctx.output(node, shape)
    requant = requant_to(node, np.array([x.scale / out.scale]), out)
    return ElementwiseOp(node.name, node.op, [x.name], out.name, in_zp=x.zero_point, requant=requant)


def _squeezed(ctx: Lowering, node: gs.Node, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The shape after a Squeeze or Unsqueeze (axes from input 1, or the attribute before opset 13)."""
    given = len(node.inputs) > 1 and bool(node.inputs[1].name)
    axes = ctx.constant(node, 1).astype(np.int64).reshape(-1).tolist() if given else node.attrs.get("axes")
    if node.op == "Squeeze":
        rank = len(shape)
        drop = {a % rank for a in axes} if axes is not None else {a for a, d in enumerate(shape) if d == 1}
        if any(shape[a] != 1 for a in drop):
            raise _fail(node, f"squeezes axes {sorted(drop)} of {shape}, not all of size 1")
        return tuple(d for a, d in enumerate(shape) if a not in drop)
    if axes is None:
        raise _fail(node, "Unsqueeze needs its axes")
    rank = len(shape) + len(axes)
    out = list(shape)
    for a in sorted(int(a) % rank for a in axes):
        out.insert(a, 1)
    return tuple(out)


def lower_gather(ctx: Lowering, node: gs.Node) -> Op:
    """Gather of one constant index on an axis: a window of size 1 there, the axis dropped for a scalar
    index (q, k and v out of torch's stacked projection; ViT's class token)."""
    x = ctx.act(node, 0)
    index = ctx.constant(node, 1).astype(np.int64)
    if index.size != 1:
        raise _fail(node, f"gathers {index.size} indices; the integer program takes one constant index")
    axis = int(node.attrs.get("axis", 0)) % len(x.shape)
    at = int(index.reshape(())) % x.shape[axis]
    starts, steps, sizes = [0] * len(x.shape), [1] * len(x.shape), list(x.shape)
    starts[axis], sizes[axis] = at, 1
    shape = tuple(sizes) if index.ndim else tuple(d for a, d in enumerate(sizes) if a != axis)
    if not shape:
        raise _fail(node, "gathers a scalar")
    out = ctx.output(node, shape)
    requant = requant_to(node, np.array([x.scale / out.scale]), out)
    return SliceOp(node.name, node.op, [x.name], out.name, cuts_first=axis == 0 and x.shape[0] != 1,
                   starts=tuple(starts), steps=tuple(steps), sizes=tuple(sizes), in_zp=x.zero_point,
                   requant=requant)


def lower_transpose(ctx: Lowering, node: gs.Node) -> Op:
    x = ctx.act(node, 0)
    perm = tuple(int(p) for p in node.attrs.get("perm", range(len(x.shape))[::-1]))
    if sorted(perm) != list(range(len(x.shape))):
        raise _fail(node, f"perm {list(perm)} is not a permutation of a {len(x.shape)}-D tensor's axes")
    out = ctx.output(node, tuple(x.shape[p] for p in perm))
    requant = requant_to(node, np.array([x.scale / out.scale]), out)
    return TransposeOp(node.name, node.op, [x.name], out.name, perm=perm, in_zp=x.zero_point, requant=requant)


def lower_slice(ctx: Lowering, node: gs.Node) -> Op:
    x = ctx.act(node, 0)
    rank = len(x.shape)
    bounds = [ctx.constant(node, i).astype(np.int64).reshape(-1) for i in (1, 2)]
    given = [len(node.inputs) > i and bool(node.inputs[i].name) for i in (3, 4)]
    axes = ctx.constant(node, 3).astype(np.int64).reshape(-1) if given[0] else np.arange(bounds[0].size)
    steps = ctx.constant(node, 4).astype(np.int64).reshape(-1) if given[1] else np.ones_like(axes)
    starts, strides, sizes = [0] * rank, [1] * rank, list(x.shape)
    for begin, end, axis, step in zip(*bounds, axes, steps, strict=True):
        a = int(axis) % rank
        if step < 1:
            raise _fail(node, f"step {int(step)} on axis {a}: only forward slices are supported")
        first, stop, stride = slice(int(begin), int(end), int(step)).indices(x.shape[a])
        starts[a], strides[a], sizes[a] = first, stride, len(range(first, stop, stride))
    if 0 in sizes:
        raise _fail(node, f"slice of {x.shape} to {tuple(sizes)} is empty")
    out = ctx.output(node, tuple(sizes))
    requant = requant_to(node, np.array([x.scale / out.scale]), out)
    cuts_first = (starts[0], strides[0], sizes[0]) != (0, 1, x.shape[0])
    return SliceOp(node.name, node.op, [x.name], out.name, cuts_first=cuts_first, starts=tuple(starts),
                   steps=tuple(strides),
                   sizes=tuple(sizes), in_zp=x.zero_point, requant=requant)


_NEAREST: dict[str, Callable[[np.ndarray], np.ndarray]] = {
    "round_prefer_floor": lambda v: np.ceil(v - 0.5), "round_prefer_ceil": lambda v: np.floor(v + 0.5),
    "floor": np.floor, "ceil": np.ceil}


def lower_resize(ctx: Lowering, node: gs.Node) -> Op:
    """Resize, mode nearest, by whole factors on the non-batch axes: ``UpsampleOp``. The ONNX coordinate
    rule (``coordinate_transformation_mode``, ``nearest_mode``) is evaluated for every output index and
    must read input ``i // factor``; anything else is refused naming the node."""
    x = ctx.act(node, 0)
    mode = str(node.attrs.get("mode", "nearest"))
    if mode != "nearest":
        raise _fail(node, f"mode '{mode}': the integer program upsamples by nearest neighbour only")
    sizes = ctx.constant(node, 3).astype(np.int64).reshape(-1) if len(node.inputs) > 3 and \
        node.inputs[3].name else None
    scales = None if sizes is not None else ctx.constant(node, 2).astype(np.float64).reshape(-1)
    if sizes is None and scales is not None:
        sizes = np.floor(np.array(x.shape) * scales).astype(np.int64)
    if sizes is None or sizes.size != len(x.shape):
        raise _fail(node, "needs constant scales or sizes for every axis")
    factors = [int(n) // d for n, d in zip(sizes, x.shape, strict=True)]
    if any(f < 1 or f * d != n for f, d, n in zip(factors, x.shape, sizes, strict=True)) or factors[0] != 1:
        raise _fail(node, f"resizes {x.shape} to {tuple(int(n) for n in sizes)}: only whole upsampling "
                          "factors off the batch axis are supported")
    coord = str(node.attrs.get("coordinate_transformation_mode", "half_pixel"))
    rounding = _NEAREST.get(str(node.attrs.get("nearest_mode", "round_prefer_floor")))
    for axis, (n, d) in enumerate(zip(sizes, x.shape, strict=True)):
        source = _resize_source(np.arange(int(n), dtype=np.float64), int(d), int(n), coord, scales, axis)
        if source is None or rounding is None or \
                not np.array_equal(np.clip(rounding(source), 0, d - 1), np.arange(int(n)) // factors[axis]):
            raise _fail(node, f"coordinate_transformation_mode '{coord}' with nearest_mode "
                              f"'{node.attrs.get('nearest_mode', 'round_prefer_floor')}' does not read input "
                              f"index i // {factors[axis]} on axis {axis}; not supported")
    out = ctx.output(node, tuple(int(n) for n in sizes))
    requant = requant_to(node, np.array([x.scale / out.scale]), out)
    return UpsampleOp(node.name, node.op, [x.name], out.name, factors=tuple(factors), in_zp=x.zero_point,
                      requant=requant)


def _resize_source(index: np.ndarray, length: int, size: int, coord: str, scales: np.ndarray | None,
                   axis: int) -> np.ndarray | None:
    """The input coordinate ONNX Resize computes for output ``index`` (None: a mode not handled)."""
    scale = float(scales[axis]) if scales is not None else size / length
    if coord in ("half_pixel", "pytorch_half_pixel"):
        return (index + 0.5) / scale - 0.5 if coord == "half_pixel" or size > 1 else np.zeros_like(index)
    if coord == "asymmetric":
        return index / scale
    if coord == "tf_half_pixel_for_nn":
        return (index + 0.5) / scale
    if coord == "align_corners":
        return index * (length - 1) / (size - 1) if size > 1 else np.zeros_like(index)
    return None


def lower_split(ctx: Lowering, node: gs.Node) -> list[Op]:
    """Split: one ``SliceOp`` per output (YOLOv8's C2f splits its channels in two), sizes from input 1,
    the ``split`` attribute, or equal parts (the last one smaller, opset 18's ``num_outputs``)."""
    x = ctx.act(node, 0)
    axis = int(node.attrs.get("axis", 0)) % len(x.shape)
    given = ctx.constant(node, 1) if len(node.inputs) > 1 and node.inputs[1].name else node.attrs.get("split")
    size, count = x.shape[axis], len(node.outputs)
    chunk = -(-size // count)
    parts = [int(v) for v in np.asarray(given).reshape(-1)] if given is not None else \
        [chunk] * (count - 1) + [size - chunk * (count - 1)]
    if len(parts) != count or sum(parts) != size or min(parts) < 1:
        raise _fail(node, f"parts {parts} do not split {size} into {count} outputs")
    if axis == 0 and x.shape[0] != 1:
        raise _fail(node, "splits the batch axis")
    ops: list[Op] = []
    for i, (start, length) in enumerate(zip(np.cumsum([0, *parts[:-1]]), parts, strict=True)):
        starts, sizes = [0] * len(x.shape), list(x.shape)
        starts[axis], sizes[axis] = int(start), length
        out = ctx.output(node, tuple(sizes), index=i)
        requant = requant_to(node, np.array([x.scale / out.scale]), out)
        ops.append(SliceOp(f"{node.name}/{i}", node.op, [x.name], out.name, starts=tuple(starts),
                           steps=(1,) * len(x.shape), sizes=tuple(sizes), in_zp=x.zero_point,
                           requant=requant))
    return ops


def lower_concat(ctx: Lowering, node: gs.Node) -> Op:
    """Concatenation; a constant input (ViT's class token, its Q → DQ folded) becomes a ``ConstantOp``
    on the output's scale, which it shares."""
    constants = {i: np.asarray(v, np.float32) for i, t in enumerate(node.inputs)
                 if (v := constant_value(t)) is not None}
    if len(constants) == len(node.inputs):
        raise _fail(node, "concatenates constants only")
    parts = [_placeholder(t.name, constants[i]) if i in constants else ctx.act(node, i)
             for i, t in enumerate(node.inputs)]
    rank = len(parts[0].shape)
    axis = int(node.attrs.get("axis", 1)) % rank
    if axis == 0 or any(len(p.shape) != rank for p in parts):
        raise _fail(node, "concatenation on the batch axis or of different ranks is not supported")
    for p in parts:
        if p.shape[:axis] != parts[0].shape[:axis] or p.shape[axis + 1:] != parts[0].shape[axis + 1:]:
            raise _fail(node, f"input shapes {[q.shape for q in parts]} do not concatenate on axis {axis}")
    shape = list(parts[0].shape)
    shape[axis] = sum(p.shape[axis] for p in parts)
    out = ctx.output(node, tuple(shape))
    for i, value in constants.items():
        parts[i] = ctx.constant_tensor(node.name, f"{node.name}/constant{i}", value, out)
    if constants:  # the plan keeps it float (a constant operand); the C has it in integers
        ctx.islands[node.name] = "concatenation with a constant"
    requants = tuple(requant_to(node, np.array([p.scale / out.scale]), out) for p in parts)
    return ConcatOp(node.name, node.op, [p.name for p in parts], out.name, axis=axis,
                    in_zps=tuple(p.zero_point for p in parts), requants=requants)


def _placeholder(name: str, value: np.ndarray) -> TensorInfo:
    return TensorInfo(name, tuple(int(d) for d in value.shape), 1.0, 0)


_SOFTMAX_FRAC = 20  # bits of the exp table: e = round(2^20 · exp(−s·d))
_SOFTMAX_GAIN_SHIFT = 16


def lower_softmax(ctx: Lowering, node: gs.Node) -> Op:
    """``SoftmaxOp`` over one axis of the node's int8 input (``axis``, default −1: opset 13's single
    axis)."""
    x = ctx.act(node, 0)
    axis = int(node.attrs.get("axis", -1)) % len(x.shape)
    if x.wide:
        raise _fail(node, f"input '{x.name}' is int16; the integer Softmax's exp table takes int8 inputs "
                          "(256 codes)")
    out = ctx.output(node, x.shape)
    table = np.rint(2.0**_SOFTMAX_FRAC * np.exp(-x.scale * np.arange(256, dtype=np.float64))).astype(np.int64)
    gain = round(2.0**_SOFTMAX_GAIN_SHIFT / out.scale)
    if gain < 1 or gain.bit_length() + _SOFTMAX_FRAC > 62:
        raise _fail(node, f"output scale {out.scale:.3g} is outside the fixed point's range")
    requant = Requant(np.ones(1, np.int64), np.zeros(1, np.int64), out.zero_point, out.qmin, out.qmax)
    return SoftmaxOp(node.name, node.op, [x.name], out.name, length=int(x.shape[axis]),
                     stride=int(np.prod(x.shape[axis + 1:], dtype=np.int64)), frac_bits=_SOFTMAX_FRAC,
                     table=table, gain=int(gain), gain_shift=_SOFTMAX_GAIN_SHIFT, requant=requant)


def lower_requantize(ctx: Lowering, q: gs.Node) -> Op:
    """A DQ → Q pair with nothing between: requantize from one scale to another."""
    x = ctx.act_tensor(q, q.inputs[0])
    out = ctx.register(q, x.shape)
    requant = requant_to(q, np.array([x.scale / out.scale]), out)
    return ElementwiseOp(q.name, "Requantize", [x.name], out.name, in_zp=x.zero_point, requant=requant)


LOWERINGS: dict[str, Callable[[Lowering, gs.Node], Op]] = {
    "Conv": lower_conv, "Gemm": lower_dense, "MatMul": lower_matmul, "Add": lower_add,
    "Relu": lower_clamp, "Clip": lower_clamp, "MaxPool": lower_pool, "AveragePool": lower_pool,
    "GlobalAveragePool": lower_pool, "Flatten": lower_reshape, "Reshape": lower_reshape,
    "Concat": lower_concat, "Mul": lower_mul, "Sigmoid": lower_lookup, "Tanh": lower_lookup,
    "Transpose": lower_transpose, "Slice": lower_slice, "Squeeze": lower_reshape, "Unsqueeze": lower_reshape,
    "Gather": lower_gather, "Softmax": lower_softmax, "Resize": lower_resize,
}
SPLITS: dict[str, Callable[[Lowering, gs.Node], list[Op]]] = {"Split": lower_split}
