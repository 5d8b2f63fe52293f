"""A small typed TFLite-level graph: what the lowering produces and the writer serializes.

Tensors hold TFLite shapes (NHWC where the lowering chose it), a dtype name, optional
quantization parameters and, for constants, their data. Operators name their builtin op,
their options (an ``*OptionsT`` object of ``schema_py_generated``) and the ONNX node they came from.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

NUMPY_DTYPES: dict[str, type[np.generic]] = {
    "float32": np.float32, "int8": np.int8, "uint8": np.uint8, "int16": np.int16,
    "int32": np.int32, "int64": np.int64, "bool": np.bool_,
}
QUANTIZED_DTYPES = frozenset({"int8", "uint8", "int16"})


@dataclass(frozen=True, eq=False)
class QParams:
    """Affine quantization: ``real = scale · (q − zero_point)``; per channel along ``dim`` if len > 1."""

    scale: np.ndarray
    zero_point: np.ndarray
    dim: int = 0

    @staticmethod
    def of(scale: Any, zero_point: Any, dim: int = 0) -> QParams:
        s = np.atleast_1d(np.asarray(scale, dtype=np.float32)).ravel()
        z = np.atleast_1d(np.asarray(zero_point, dtype=np.int64)).ravel()
        return QParams(s, z, dim)

    def same_as(self, other: QParams | None) -> bool:
        return other is not None and np.array_equal(self.scale, other.scale) \
            and np.array_equal(self.zero_point, other.zero_point)

    @property
    def per_tensor(self) -> bool:
        return self.scale.size == 1

    def dequantize(self, data: np.ndarray) -> np.ndarray:
        """Real values of ``data`` (per channel along ``dim`` when there are several scales)."""
        if self.per_tensor or data.ndim == 0:
            return ((data.astype(np.float64) - self.zero_point[0]) * self.scale[0]).astype(np.float32)
        view = [1] * data.ndim
        view[self.dim] = -1
        zero, scale = self.zero_point.reshape(view), self.scale.reshape(view).astype(np.float64)
        return ((data.astype(np.float64) - zero) * scale).astype(np.float32)

    def describe(self) -> str:
        if self.per_tensor:
            return f"scale {float(self.scale[0]):.6g}, zero point {int(self.zero_point[0])}"
        return f"{self.scale.size} per-channel scales on dim {self.dim}"


@dataclass
class Tensor:
    name: str
    shape: tuple[int, ...]
    dtype: str
    quant: QParams | None = None
    data: np.ndarray | None = None
    nhwc: bool = False  # 4-D activation stored NHWC while the ONNX tensor is NCHW

    @property
    def is_const(self) -> bool:
        return self.data is not None


@dataclass
class Op:
    kind: str                      # builtin op name, e.g. "CONV_2D"
    inputs: list[int]              # tensor indices, -1 for an omitted optional input
    outputs: list[int]
    options: Any = None            # a schema ``*OptionsT`` object or None
    origin: str = ""               # ONNX node name (for messages and reports)


@dataclass
class Graph:
    tensors: list[Tensor] = field(default_factory=list)
    ops: list[Op] = field(default_factory=list)
    inputs: list[int] = field(default_factory=list)
    outputs: list[int] = field(default_factory=list)
    _names: set[str] = field(default_factory=set)

    def add(self, name: str, shape: tuple[int, ...] | list[int], dtype: str, quant: QParams | None = None,
            data: np.ndarray | None = None, nhwc: bool = False) -> int:
        """Append a tensor with a unique name; returns its index."""
        unique, n = name, 0
        while unique in self._names:
            n += 1
            unique = f"{name}_{n}"
        self._names.add(unique)
        if data is not None:
            data = np.ascontiguousarray(data, dtype=NUMPY_DTYPES[dtype]).reshape(tuple(shape))
        self.tensors.append(Tensor(unique, tuple(int(d) for d in shape), dtype, quant, data, nhwc))
        return len(self.tensors) - 1

    def const(self, name: str, data: np.ndarray, dtype: str | None = None,
              quant: QParams | None = None) -> int:
        array = np.asarray(data)
        return self.add(name, array.shape, dtype or _dtype_name(array.dtype), quant, array)

    def op(self, kind: str, inputs: list[int], outputs: list[int], options: Any = None,
           origin: str = "") -> Op:
        new = Op(kind, list(inputs), list(outputs), options, origin)
        self.ops.append(new)
        return new

    def like(self, index: int, name: str, dtype: str | None = None, quant: QParams | None = None,
             shape: tuple[int, ...] | None = None, nhwc: bool | None = None) -> int:
        """A new activation tensor shaped like ``index`` (optionally with another dtype/params)."""
        t = self.tensors[index]
        return self.add(name, t.shape if shape is None else shape, dtype or t.dtype,
                        quant if dtype else (quant or t.quant), nhwc=t.nhwc if nhwc is None else nhwc)

    def producer(self, index: int) -> Op | None:
        for op in self.ops:
            if index in op.outputs:
                return op
        return None

    def prune(self) -> None:
        """Drop ops whose outputs nobody reads (e.g. a cached conversion made unnecessary)."""
        live = set(self.outputs)
        kept: list[Op] = []
        for op in reversed(self.ops):
            if any(o in live for o in op.outputs):
                kept.append(op)
                live.update(i for i in op.inputs if i >= 0)
        self.ops = kept[::-1]

    def histogram(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for op in self.ops:
            counts[op.kind] = counts.get(op.kind, 0) + 1
        return dict(sorted(counts.items()))


def _dtype_name(dtype: np.dtype[Any]) -> str:
    for name, np_type in NUMPY_DTYPES.items():
        if np.dtype(np_type) == dtype:
            return name
    raise ValueError(f"no TFLite dtype for numpy {dtype}")
