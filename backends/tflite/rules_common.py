"""Helpers shared by the lowering rules: weights, biases, fused activations, padding."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.errors import UnsupportedError
from dsqc.ir import constant_value

from .graph import QParams
from .schema import ACTIVATIONS, options

if TYPE_CHECKING:
    from .graph import Op
    from .lowerer import Lowerer


def unsupported(node: gs.Node, why: str) -> UnsupportedError:
    return UnsupportedError(f"node '{node.name}' ({node.op}): {why}")


def optional(node: gs.Node, index: int) -> gs.Tensor | None:
    return node.inputs[index] if len(node.inputs) > index and node.inputs[index].name else None


def stored_name(t: gs.Tensor) -> str:
    """The ONNX initializer's own name for a constant read through InsertQDQ's DequantizeLinear."""
    return str(t.name).removesuffix("_dequantized")


def int8_weight(lw: Lowerer, w: gs.Tensor, node: gs.Node, perm: tuple[int, ...]) -> int:
    """The int8 weight behind a DequantizeLinear, transposed by ``perm`` (per-channel dim follows)."""
    data, quant = lw.qconst[w.name]
    if data.dtype != np.int8:
        raise unsupported(node, f"weight '{w.name}' is {data.dtype}; TFLite int8 kernels take int8 weights")
    if np.any(quant.zero_point != 0):
        raise unsupported(node, f"weight '{w.name}' has a non-zero zero point; TFLite weights are symmetric")
    if np.any(data == -128):
        lw.stats.notes.append(f"weight '{w.name}': -128 clipped to -127 (TFLite weights are in [-127, 127])")
        data = np.maximum(data, -127).astype(np.int8)
    dim = perm.index(quant.dim) if not quant.per_tensor else 0
    return lw.g.const(stored_name(w), data.transpose(perm), "int8",
                      QParams(quant.scale, np.zeros_like(quant.zero_point), dim))


def float_weight(lw: Lowerer, w: gs.Tensor, node: gs.Node, perm: tuple[int, ...]) -> int:
    value = lw.const(w)
    if value is None:
        raise unsupported(node, f"weight '{w.name}' is not a constant")
    return lw.g.const(stored_name(w), value.astype(np.float32).transpose(perm), "float32")


def int32_bias(lw: Lowerer, b: gs.Tensor | None, node: gs.Node, x_idx: int, w_idx: int,
               channels: int) -> int:
    """int32 bias with scale s_in·s_w, zero point 0: taken from the QDQ model when it agrees."""
    s_in = lw.g.tensors[x_idx].quant.scale[0]  # type: ignore[union-attr]
    s_w = lw.g.tensors[w_idx].quant.scale      # type: ignore[union-attr]
    scale = (np.float32(s_in) * s_w.astype(np.float32)).astype(np.float32)
    scale = np.broadcast_to(scale, (channels,)).copy() if scale.size > 1 else scale
    name = stored_name(b) if b is not None else f"{node.name}_bias"
    if b is None:
        data = np.zeros(channels, np.int32)
    elif b.name in lw.qconst and _agrees(lw.qconst[b.name], scale):
        data = lw.qconst[b.name][0].astype(np.int32)
    else:
        if b.name in lw.qconst:
            lw.stats.notes.append(f"bias '{b.name}': requantized to s_in·s_w of the TFLite input")
        value = lw.const(b)
        if value is None:
            raise unsupported(node, f"bias '{b.name}' is not a constant")
        q = np.rint(value.astype(np.float64).reshape(-1) / scale.astype(np.float64))
        data = np.clip(q, -(2**31), 2**31 - 1).astype(np.int32)
    quant = QParams(scale, np.zeros(scale.size, np.int64), 0)
    return lw.g.const(name, data.reshape(channels), "int32", quant)


def _agrees(qconst: tuple[np.ndarray, QParams], scale: np.ndarray) -> bool:
    data, quant = qconst
    return data.dtype == np.int32 and bool(np.all(quant.zero_point == 0)) and quant.scale.size in (
        1, scale.size) and bool(np.allclose(quant.scale, scale, rtol=1e-6, atol=0))


def float_bias(lw: Lowerer, b: gs.Tensor | None, node: gs.Node, channels: int) -> int:
    value = np.zeros(channels, np.float32) if b is None else lw.const(b)
    if value is None:
        raise unsupported(node, f"bias '{b.name if b is not None else ''}' is not a constant")
    return lw.g.const(stored_name(b) if b is not None else f"{node.name}_bias",
                      value.astype(np.float32).reshape(channels), "float32")


def clip_bounds(lw: Lowerer, node: gs.Node) -> tuple[float, float] | None:
    if node.op == "Relu":
        return 0.0, math.inf
    if "min" in node.attrs or "max" in node.attrs:
        return float(node.attrs.get("min", -math.inf)), float(node.attrs.get("max", math.inf))
    bounds = []
    for index, default in ((1, -math.inf), (2, math.inf)):
        t = optional(node, index)
        if t is None:
            bounds.append(default)
            continue
        value = lw.const(t)
        if value is None:
            return None
        bounds.append(float(value))
    return bounds[0], bounds[1]


def activation_name(bounds: tuple[float, float] | None) -> str | None:
    return {(0.0, math.inf): "RELU", (0.0, 6.0): "RELU6", (-1.0, 1.0): "RELU_N1_TO_1"}.get(
        bounds) if bounds else None


def fuse_activation(lw: Lowerer, node: gs.Node, op: Op) -> None:
    """Float op → single Relu/Relu6/Clip(-1,1) reader: fold it into ``fusedActivationFunction``."""
    out = node.outputs[0]
    readers = list(out.outputs)
    if op.options is None or not hasattr(op.options, "fusedActivationFunction") or len(readers) != 1:
        return
    act = readers[0]
    if act.op not in ("Relu", "Clip") or any(o is out for o in lw.onnx.outputs):
        return
    name = activation_name(clip_bounds(lw, act))
    if name is None or lw.g.tensors[op.outputs[0]].dtype != "float32":
        return
    op.options.fusedActivationFunction = ACTIVATIONS[name]
    lw.values[act.outputs[0].name] = lw.values[out.name]
    lw.consumed.add(act.name)


def same_pads(size: int, k: int, stride: int, dilation: int) -> tuple[int, int]:
    """TFLite SAME padding (extra at the end) for one spatial dimension."""
    keff = (k - 1) * dilation + 1
    out = -(-size // stride)
    total = max((out - 1) * stride + keff - size, 0)
    return total // 2, total - total // 2


def spatial_padding(node: gs.Node, in_hw: tuple[int, int], kernel: tuple[int, int],
                    strides: tuple[int, int], dilations: tuple[int, int]) -> tuple[str, list[int] | None]:
    """("SAME"|"VALID", explicit [top, left, bottom, right] or None) matching the ONNX node's padding."""
    auto = node.attrs.get("auto_pad", "NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    same = [same_pads(in_hw[i], kernel[i], strides[i], dilations[i]) for i in range(2)]
    if auto == "VALID":
        return "VALID", None
    if auto == "SAME_UPPER":
        return "SAME", None
    if auto == "SAME_LOWER":
        pads = [same[0][1], same[1][1], same[0][0], same[1][0]]
    else:
        pads = [int(p) for p in node.attrs.get("pads", [0, 0, 0, 0])]
    if not any(pads):
        return "VALID", None
    if (pads[0], pads[2]) == same[0] and (pads[1], pads[3]) == same[1]:
        return "SAME", None
    return "VALID", pads


def _padding_is_lowest(lw: Lowerer, idx: int) -> bool:
    """PAD's fill (the zero point; 0.0 in float) is already the lowest value ``idx`` can hold: an int8
    tensor whose zero point is -128 (range [0, max]), or a float written by an op with a fused RELU or
    RELU6. Then max pooling can pad with PAD, which XNNPACK takes, instead of PADV2, which it does not
    (LiteRT 2.3: PADV2 splits the delegated graph in two; ResNet's stem max pool)."""
    t = lw.g.tensors[idx]
    if t.dtype == "int8":
        return t.quant is not None and t.quant.per_tensor and int(t.quant.zero_point[0]) == -128
    producer = lw.g.producer(idx)
    act = getattr(producer.options, "fusedActivationFunction", 0) if producer and producer.options else 0
    return t.dtype == "float32" and act in (ACTIVATIONS["RELU"], ACTIVATIONS["RELU6"])


def pad_nhwc(lw: Lowerer, x_idx: int, pads: list[int], node: gs.Node, fill_lowest: bool = False) -> int:
    """Explicit PAD (or, for max pooling, PADV2 with the lowest value unless PAD's fill already is)."""
    t = lw.g.tensors[x_idx]
    n, h, w, c = t.shape
    shape = (n, h + pads[0] + pads[2], w + pads[1] + pads[3], c)
    out = lw.g.like(x_idx, f"{t.name}_padded", shape=shape)
    paddings = lw.g.const(f"{t.name}_paddings",
                          np.asarray([[0, 0], [pads[0], pads[2]], [pads[1], pads[3]], [0, 0]], np.int32))
    if not fill_lowest or _padding_is_lowest(lw, x_idx):
        lw.g.op("PAD", [x_idx, paddings], [out], options("PAD"), node.name)
        return out
    lowest: Any = np.int8(-128) if t.dtype == "int8" else np.float32(np.finfo(np.float32).min)
    fill = lw.g.const(f"{t.name}_pad_value", np.asarray(lowest), t.dtype, t.quant)
    lw.g.op("PADV2", [x_idx, paddings, fill], [out], options("PADV2"), node.name)
    return out


def ints(node: gs.Node, name: str, default: list[int]) -> list[int]:
    return [int(v) for v in node.attrs.get(name, default)]


def const_ints(tensor: gs.Tensor | None) -> list[int] | None:
    if tensor is None:
        return None
    value = constant_value(tensor)
    return None if value is None else [int(v) for v in np.asarray(value).reshape(-1)]
