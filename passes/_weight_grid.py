"""The integer grid of a quantized layer weight in a QDQ model, for passes that re-choose its integers.

A layer (Conv, ConvTranspose, Gemm, MatMul) reads its weight through ``DequantizeLinear(stored, scale,
zero_point)`` of constants — per tensor, per channel (``axis``) or blockwise (``block_size``). The
passes that learn the rounding (AdaRound, GPTQ) keep scale and zero point as planned and only change
``stored``, inside ``[qmin, qmax]``: the plan's range (``weight_limit``, narrow int8, int4), not the
dtype's, so every target's rules still hold.
"""

from __future__ import annotations

from dataclasses import dataclass

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import constant_value, producer
from dsqc.op_kinds import weight_output_axis

_SIGNED = {np.dtype(np.int8): 8, np.dtype(ml_dtypes.int4): 4}
_UNSIGNED = {np.dtype(np.uint8): 8, np.dtype(ml_dtypes.uint4): 4}


def default_range(dtype: np.dtype) -> tuple[int, int]:
    """The planner's weight range for a storage type: narrow signed (int8 ±127, int4 ±7), full unsigned."""
    if dtype in _SIGNED:
        top = 2 ** (_SIGNED[dtype] - 1) - 1
        return -top, top
    if dtype in _UNSIGNED:
        return 0, 2 ** _UNSIGNED[dtype] - 1
    raise ValueError(f"not an 8- or 4-bit integer type: {dtype}")


@dataclass
class WeightGrid:
    """``w = (q - zero) * scale`` elementwise (``scale``/``zero`` broadcast to the weight's shape)."""

    stored: gs.Constant
    q: np.ndarray  # int64, the weight's shape
    scale: np.ndarray  # float32, the weight's shape
    zero: np.ndarray  # int64, the weight's shape
    qmin: int
    qmax: int

    def dequantize(self, q: np.ndarray | None = None) -> np.ndarray:
        q = self.q if q is None else q
        return ((q - self.zero).astype(np.float32) * self.scale).astype(np.float32)

    def nearest(self, w: np.ndarray) -> np.ndarray:
        """Round-to-nearest-even on this grid, as QuantizeLinear does (float32 division)."""
        ratio = w.astype(np.float32) / self.scale
        return np.clip(np.rint(ratio).astype(np.int64) + self.zero, self.qmin, self.qmax)

    def write(self, q: np.ndarray) -> None:
        """Store ``q`` (clipped to the range) in the constant's own integer type."""
        dtype = np.asarray(self.stored.values).dtype
        clipped = np.clip(np.asarray(q, np.int64), self.qmin, self.qmax)
        self.stored.values = clipped.astype(dtype).reshape(self.q.shape)
        self.q = clipped.reshape(self.q.shape)


def weight_grid(node: gs.Node, limits: tuple[int, int] | None = None) -> WeightGrid | str:
    """The grid of ``node``'s weight (input 1), or the reason there is none to re-round."""
    if len(node.inputs) < 2:
        return "no weight input"
    dq = producer(node.inputs[1])
    if dq is None or dq.op != "DequantizeLinear":
        return "weight is not dequantized from integers"
    stored = dq.inputs[0]
    scale = constant_value(dq.inputs[1])
    if not isinstance(stored, gs.Constant) or scale is None:
        return "weight's DequantizeLinear does not read constants"
    if len(stored.outputs) != 1 or len(node.inputs[1].outputs) != 1:
        return "integer weight is shared with another layer"
    q = np.asarray(stored.values)
    if q.dtype not in _SIGNED and q.dtype not in _UNSIGNED:
        return f"integer weight type {q.dtype} is not 8- or 4-bit"
    zero_in = dq.inputs[2] if len(dq.inputs) > 2 and dq.inputs[2].name else None
    zero = constant_value(zero_in) if zero_in is not None else None
    zero = np.zeros(scale.shape, np.int64) if zero is None else zero.astype(np.int64)
    lo, hi = limits if limits is not None else default_range(q.dtype)
    q = q.astype(np.int64)
    return WeightGrid(stored, q, _expand(scale.astype(np.float32), q, dq), _expand(zero, q, dq), lo, hi)


def _expand(param: np.ndarray, q: np.ndarray, dq: gs.Node) -> np.ndarray:
    if param.ndim == 0:
        return np.broadcast_to(param, q.shape).copy()
    axis = int(dq.attrs.get("axis", 1)) % q.ndim
    block = int(dq.attrs.get("block_size", 0))
    if block:
        full = np.repeat(param, block, axis=axis)[tuple(slice(0, d) for d in q.shape)]
    else:
        shape = [1] * q.ndim
        shape[axis] = param.size
        full = param.reshape(shape)
    return np.broadcast_to(full, q.shape).copy()


def as_rows(node: gs.Node, w: np.ndarray) -> np.ndarray | None:
    """The weight as ``[outputs, inputs]`` (a view's copy) for Gemm/MatMul, ``None`` for other layers."""
    matrix = node.op == "MatMul" or (node.op == "Gemm" and not int(node.attrs.get("transA", 0)))
    if not matrix or w.ndim != 2:
        return None
    return np.ascontiguousarray(w if weight_output_axis(node) == 0 else w.T)


def from_rows(node: gs.Node, rows: np.ndarray) -> np.ndarray:
    """Inverse of ``as_rows``."""
    return rows if weight_output_axis(node) == 0 else np.ascontiguousarray(rows.T)
