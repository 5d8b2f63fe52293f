"""Arithmetic: FULLY_CONNECTED, BATCH_MATMUL, elementwise ops, activations, Softmax, LayerNorm, reductions."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.op_kinds import weight_output_axis

from .graph import QParams
from .patterns import Match, find_bias_add
from .profile import XNNPACK_NO_INT8
from .rulebook import rule
from .rules_common import (
    activation_name,
    clip_bounds,
    float_bias,
    float_weight,
    fuse_activation,
    int8_weight,
    int32_bias,
    unsupported,
)
from .schema import options

if TYPE_CHECKING:
    from .lowerer import Lowerer, Target

FIXED = {"SOFTMAX": QParams.of(1 / 256, -128), "LOGISTIC": QParams.of(1 / 256, -128),
         "TANH": QParams.of(1 / 128, 0)}
_BINARY = {"Add": "ADD", "Sub": "SUB", "Mul": "MUL", "Div": "DIV", "Max": "MAXIMUM", "Min": "MINIMUM",
           "Pow": "POW"}
_UNARY = {"Sigmoid": "LOGISTIC", "Tanh": "TANH", "HardSwish": "HARD_SWISH", "Sqrt": "SQRT", "Exp": "EXP",
          "Neg": "NEG", "Abs": "ABS", "LeakyRelu": "LEAKY_RELU", "Gelu": "GELU"}
_FUSABLE = {"ADD", "SUB", "MUL", "DIV"}
_FLOAT_ONLY = {"DIV", "POW", "SQRT", "EXP", "NEG", "ABS"}


def common_layout(lw: Lowerer, names: list[str], rank: int) -> str:
    """NHWC for 4-D when an input already is, or when all inputs are graph inputs (their transpose
    to NHWC is an edge transpose that spatial ops downstream need anyway)."""
    values = [lw.value(n) for n in names]
    if rank != 4:
        return "plain"
    return "nhwc" if any(v.layout == "nhwc" for v in values) or all(v.edge for v in values) else "plain"


def arrange(value: np.ndarray, rank: int, layout: str) -> np.ndarray:
    """A constant operand broadcast-ready for an activation of ``rank`` in ``layout``."""
    if value.size == 1:
        return value.reshape(1)
    value = value.reshape((1,) * (rank - value.ndim) + value.shape)
    return value.transpose(0, 2, 3, 1) if layout == "nhwc" else value


def _const_int8(value: np.ndarray) -> tuple[np.ndarray, QParams]:
    lo, hi = min(float(value.min()), 0.0), max(float(value.max()), 0.0)
    scale = (hi - lo) / 255.0 or 1.0
    zero = int(np.clip(np.rint(-128 - lo / scale), -128, 127))
    q = np.clip(np.rint(value / scale) + zero, -128, 127).astype(np.int8)
    return q, QParams.of(scale, zero)


def operands(lw: Lowerer, inputs: list[gs.Tensor], int8: bool, layout: str, rank: int) -> list[int]:
    """TFLite tensors for ``inputs``: activations converted to ``layout``, constants arranged."""
    idx = []
    for t in inputs:
        if not lw.is_const(t):
            idx.append(lw.int8_in(t.name, layout) if int8 else lw.float_in(t.name, layout))
            continue
        if int8 and t.name in lw.qconst and lw.qconst[t.name][1].per_tensor:
            data, quant = lw.qconst[t.name]
            idx.append(lw.g.const(t.name, arrange(data, rank, layout), "int8", quant))
            continue
        value = arrange(np.asarray(lw.const(t), np.float32), rank, layout)
        if int8:
            q, quant = _const_int8(value)
            idx.append(lw.g.const(t.name, q, "int8", quant))
        else:
            idx.append(lw.g.const(t.name, value, "float32"))
    return idx


_MAX_RESCALE = 2.0 ** 24


def _rescale_overflows(lw: Lowerer, acts: list[str], out: QParams) -> bool:
    """TFLite's int8 ADD/SUB rescales every input and the output by fixed-point multipliers; scales
    that differ by more than ``_MAX_RESCALE`` underflow them (LiteRT aborts the process)."""
    scales = [float(lw.g.tensors[lw.value(n).tensor].quant.scale[0]) for n in acts  # type: ignore[union-attr]
              if lw.is_int8(n)] + [float(out.scale[0])]
    return max(scales) / min(scales) > _MAX_RESCALE


def elementwise(lw: Lowerer, node: gs.Node, kind: str, opts: Any = None, fixed: QParams | None = None,
                inputs: list[gs.Tensor] | None = None, result: gs.Tensor | None = None,
                layout: str | None = None) -> None:
    """One TFLite op over ``inputs`` (default: the node's), int8 when placed so, else float."""
    inputs = list(node.inputs) if inputs is None else inputs
    result = node.outputs[0] if result is None else result
    acts = [t.name for t in inputs if t.name and not lw.is_const(t)]
    if not acts:
        raise unsupported(node, "all inputs are constant (fold constants first)")
    rank = len(lw.onnx_shape(result))
    layout = layout or common_layout(lw, acts, rank)
    target = lw.target(node, acts, result) if kind not in _FLOAT_ONLY else None
    too_wide = target is not None and kind in ("ADD", "SUB") and _rescale_overflows(lw, acts, target.quant)
    if too_wide:  # an additive attention mask quantized at scale ~1e36: int8 ADD aborts in LiteRT
        target = None
    if target is not None and kind in XNNPACK_NO_INT8:  # planned int8 (-B float_undelegated=false)
        lw.stats.undelegated.append(node.name)
    ins = operands(lw, inputs, target is not None, layout, rank)
    out = lw.output(node, target, layout, result=result)
    if too_wide:
        lw.stats.float_reasons[node.name] = (f"{kind}: its int8 scales differ over {_MAX_RESCALE:g}x (an "
                                             "additive mask?); TFLite's int8 kernel cannot rescale them")
    if target is not None and fixed is not None and not fixed.same_as(target.quant):
        # the runtime imposes the output parameters: compute there, then requantize to the plan's
        fixed_out = lw.g.like(out, f"{lw.g.tensors[out].name}_fixed", "int8", fixed)
        lw.g.op(kind, ins, [fixed_out], opts, node.name)
        lw.g.op("QUANTIZE", [fixed_out], [out], origin=node.name)
        lw.stats.requantize.append(f"{node.name}: {kind} output is fixed at {fixed.describe()}")
        return
    op = lw.g.op(kind, ins, [out], opts, node.name)
    if kind in _FUSABLE:
        fuse_activation(lw, node, op)


@rule(*_BINARY)
def binary(lw: Lowerer, node: gs.Node) -> None:
    kind = _BINARY[node.op]
    if kind == "POW":
        exponent = lw.const(node.inputs[1])
        if exponent is None or exponent.size != 1 or float(exponent.reshape(-1)[0]) != 2.0:
            raise unsupported(node, "only Pow(x, 2) is lowered (as MUL)")
        x = node.inputs[0]
        return elementwise(lw, node, "MUL", options("MUL"), inputs=[x, x])
    elementwise(lw, node, kind, options(kind))


@rule(*_UNARY)
def unary(lw: Lowerer, node: gs.Node) -> None:
    kind = _UNARY[node.op]
    opts = None
    if kind == "LEAKY_RELU":
        opts = options(kind, alpha=float(node.attrs.get("alpha", 0.01)))
    elif kind == "GELU":
        approx = node.attrs.get("approximate", "none")
        opts = options(kind, approximate=(approx.decode() if isinstance(approx, bytes) else approx) == "tanh")
    elif kind == "HARD_SWISH":
        opts = options(kind)
    elementwise(lw, node, kind, opts, FIXED.get(kind))


@rule("Relu", "Clip")
def relu(lw: Lowerer, node: gs.Node) -> None:
    kind = activation_name(clip_bounds(lw, node))
    if kind is None:
        raise unsupported(node, "Clip bounds other than (0, inf), (0, 6), (-1, 1)")
    elementwise(lw, node, kind, inputs=[node.inputs[0]])


@rule("Softmax")
def softmax(lw: Lowerer, node: gs.Node) -> None:
    x = node.inputs[0]
    rank = len(lw.onnx_shape(x))
    axis = int(node.attrs.get("axis", -1 if lw.opset >= 13 else 1)) % rank
    layout = "nhwc" if rank == 4 and axis == 1 else "plain"  # NHWC puts the channel axis last
    if layout == "plain" and axis != rank - 1:
        raise unsupported(node, f"softmax over axis {axis}; TFLite SOFTMAX works on the last axis")
    elementwise(lw, node, "SOFTMAX", options("SOFTMAX", beta=1.0), FIXED["SOFTMAX"], layout=layout)


def gelu(lw: Lowerer, match: Match) -> None:
    """The torch GELU pattern as one GELU op reading ``match.source``."""
    source = lw.onnx.tensors()[match.source]
    elementwise(lw, match.final, "GELU", options("GELU", approximate=False), inputs=[source])


@rule("Gemm")
def gemm(lw: Lowerer, node: gs.Node) -> None:
    a, w = node.inputs[0], node.inputs[1]
    c = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    if node.attrs.get("transA", 0) or not lw.is_const(w) or alpha <= 0:
        raise unsupported(node, "Gemm needs a constant B, transA=0 and alpha > 0 to become FULLY_CONNECTED")
    perm = (0, 1) if weight_output_axis(node) == 0 else (1, 0)
    bias = None if c is None else lw.const(c)
    n_out = lw.onnx_shape(node.outputs[0])[-1]
    if c is not None and (bias is None or bias.size != n_out):
        raise unsupported(node, "Gemm bias C must be a constant vector")
    if bias is not None and beta != 1.0:
        c, bias = None, bias * np.float32(beta)
    fully_connected(lw, node, a, w, perm, c, bias, alpha)


@rule("MatMul")
def matmul(lw: Lowerer, node: gs.Node) -> None:
    a, b = node.inputs
    if lw.is_const(b) and len(lw.onnx_shape(b)) == 2:
        weight = lw.const(b)
        assert weight is not None
        match = find_bias_add(lw.onnx, node, weight)
        if match is None:
            return fully_connected(lw, node, a, b, (1, 0), None, None)
        lw.consumed.update(n.name for n in [*match.inner, match.final])
        return fully_connected(lw, node, a, b, (1, 0), None, match.bias, result=match.final.outputs[0])
    if lw.is_const(a) or lw.is_const(b):
        raise unsupported(node, "constant operand of rank > 2 (or on the left) in MatMul")
    target = lw.target(node, [a.name, b.name])
    if target is not None:  # planned int8 (-B float_undelegated=false)
        lw.stats.undelegated.append(node.name)
    ins = [lw.int8_in(t.name, "plain") if target else lw.float_in(t.name, "plain") for t in (a, b)]
    out = lw.output(node, target)
    lw.g.op("BATCH_MATMUL", ins, [out], options("BATCH_MATMUL", adjX=False, adjY=False), node.name)


def fully_connected(lw: Lowerer, node: gs.Node, a: gs.Tensor, w: gs.Tensor, perm: tuple[int, int],
                    b: gs.Tensor | None, bias: np.ndarray | None, alpha: float = 1.0,
                    result: gs.Tensor | None = None) -> None:
    """FULLY_CONNECTED; after an NHWC Flatten the weight columns are permuted from CHW to HWC order."""
    value = lw.value(a.name)
    layout = "flat_hwc" if value.layout == "flat_hwc" else "plain"
    target: Target | None = lw.target(node, [a.name], result) if w.name in lw.qconst else None
    x_idx = lw.int8_in(a.name, layout) if target else lw.float_in(a.name, layout)
    w_idx = int8_weight(lw, w, node, perm) if target else float_weight(lw, w, node, perm)
    wt = lw.g.tensors[w_idx]
    assert wt.data is not None and (wt.quant is not None or not target)
    if alpha != 1.0 and wt.quant is not None:
        wt.quant = QParams(wt.quant.scale * np.float32(alpha), wt.quant.zero_point, wt.quant.dim)
    elif alpha != 1.0:
        wt.data = (wt.data * np.float32(alpha)).astype(np.float32)
    if layout == "flat_hwc":
        assert value.chw is not None
        c, h, width = value.chw
        columns = np.arange(c * h * width).reshape(c, h, width).transpose(1, 2, 0).reshape(-1)
        wt.data = np.ascontiguousarray(wt.data[:, columns])
    n_out = wt.shape[0]
    if bias is not None and b is None:
        b = gs.Constant(f"{node.name}_bias", np.asarray(bias, np.float32))
    b_idx = int32_bias(lw, b, node, x_idx, w_idx, n_out) if target else float_bias(lw, b, node, n_out)
    out = lw.output(node, target, result=result)
    opts = options("FULLY_CONNECTED", keepNumDims=len(lw.onnx_shape(a)) > 2)
    op = lw.g.op("FULLY_CONNECTED", [x_idx, w_idx, b_idx], [out], opts, node.name)
    if result is None:
        fuse_activation(lw, node, op)


@rule("LayerNormalization")
def layer_norm(lw: Lowerer, node: gs.Node) -> None:
    """A float island: MEAN, SUB, MUL, MEAN, ADD ε, RSQRT, MUL, MUL γ, ADD β."""
    x = node.inputs[0]
    rank = len(lw.onnx_shape(x))
    axis = int(node.attrs.get("axis", -1)) % rank
    gamma = lw.const(node.inputs[1])
    beta = lw.const(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if gamma is None or (len(node.inputs) > 2 and node.inputs[2].name and beta is None):
        raise unsupported(node, "scale and bias must be constants")
    x_idx = lw.float_in(x.name, "plain")
    axes = lw.g.const(f"{node.name}_axes", np.arange(axis, rank, dtype=np.int32))
    g = lw.g
    name = node.name

    def tmp(suffix: str, shape: tuple[int, ...] | None = None) -> int:
        return g.like(x_idx, f"{name}_{suffix}", shape=shape)

    reduced = tuple(d if i < axis else 1 for i, d in enumerate(g.tensors[x_idx].shape))
    mean, centered, square = tmp("mean", reduced), tmp("centered"), tmp("square")
    var, var_eps, inv = tmp("var", reduced), tmp("var_eps", reduced), tmp("rstd", reduced)
    normed = tmp("norm")
    eps = g.const(f"{name}_epsilon", np.asarray([node.attrs.get("epsilon", 1e-5)], np.float32))
    g.op("MEAN", [x_idx, axes], [mean], options("MEAN", keepDims=True), name)
    g.op("SUB", [x_idx, mean], [centered], options("SUB"), name)
    g.op("MUL", [centered, centered], [square], options("MUL"), name)
    g.op("MEAN", [square, axes], [var], options("MEAN", keepDims=True), name)
    g.op("ADD", [var, eps], [var_eps], options("ADD"), name)
    g.op("RSQRT", [var_eps], [inv], None, name)
    g.op("MUL", [centered, inv], [normed], options("MUL"), name)
    scaled = normed if np.all(gamma == 1) else tmp("scaled")
    if scaled != normed:
        g.op("MUL", [normed, g.const(f"{name}_gamma", arrange(gamma, rank, "plain"), "float32")], [scaled],
             options("MUL"), name)
    out = lw.output(node, None)
    shift = arrange(beta if beta is not None else np.zeros(1, np.float32), rank, "plain")
    g.op("ADD", [scaled, g.const(f"{name}_beta", shift, "float32")], [out], options("ADD"), name)


@rule("ReduceMean", "ReduceSum", "ReduceMax")
def reduce(lw: Lowerer, node: gs.Node) -> None:
    x = node.inputs[0]
    rank = len(lw.onnx_shape(x))
    raw = node.attrs.get("axes")
    if raw is None and len(node.inputs) > 1 and node.inputs[1].name:
        raw = lw.const(node.inputs[1])
        if raw is None:
            raise unsupported(node, "axes must be constant")
    axes = [int(a) % rank for a in (range(rank) if raw is None else np.asarray(raw).reshape(-1))]
    keep = bool(node.attrs.get("keepdims", 1))
    value = lw.value(x.name)
    layout = "nhwc" if value.layout == "nhwc" and (keep or 1 in axes or not ({2, 3} - set(axes))) else "plain"
    tfl_axes = [(0, 3, 1, 2)[a] for a in axes] if layout == "nhwc" else axes
    kind = {"ReduceMean": "MEAN", "ReduceSum": "SUM", "ReduceMax": "REDUCE_MAX"}[node.op]
    target = lw.target(node, [x.name]) if kind != "SUM" else None
    same_scale = kind == "REDUCE_MAX" and lw.is_int8(x.name)
    x_idx = lw.int8_in(x.name, layout) if target or same_scale else lw.float_in(x.name, layout)
    axes_idx = lw.g.const(f"{node.name}_axes", np.asarray(sorted(tfl_axes), np.int32))
    out_layout = layout if keep or layout == "plain" else "plain"
    if same_scale and not target:
        out = lw.output(node, None, out_layout, "int8", lw.g.tensors[x_idx].quant)
    else:
        out = lw.output(node, target, out_layout)
    lw.g.op(kind, [x_idx, axes_idx], [out], options(kind, keepDims=keep), node.name)
