"""``QuantSpec`` (how one tensor is quantized) and ``QuantPlan`` (the whole model's decisions)."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import numpy as np

DTYPE_RANGES: dict[str, tuple[int, int]] = {
    "int8": (-128, 127),
    "uint8": (0, 255),
    "int16": (-32768, 32767),
    "int4": (-8, 7),
    "uint4": (0, 15),
    "int32": (-(2**31), 2**31 - 1),
}


class Precision(str, Enum):
    """A node's precision. ``INT16`` (int16 activations, int8 weights) is asked for (recipe, search) on
    targets with int16 integer kernels; the plan records such a node as ``INT8`` with ``wide`` set, and
    its activation tensors int16."""

    INT4 = "int4"
    INT8 = "int8"
    INT16 = "int16"
    FP16 = "fp16"
    FP32 = "fp32"


@dataclass(frozen=True, eq=False)
class QuantSpec:
    """Affine quantization of one tensor: ``q = clamp(round_half_even(x / scale) + zero_point)``.

    ``axis`` set → per-channel (scale/zero_point 1-D along it); ``block_size`` set → blockwise
    along ``axis`` (scale shape = tensor shape with that axis divided by the block size).
    ``narrow`` restricts signed types to the symmetric range (int8 [-127, 127]); ``limit`` narrows
    further to [-limit, limit] (7-bit weights for x86 u8s8 kernels without VNNI).
    """

    dtype: str
    scale: np.ndarray
    zero_point: np.ndarray
    axis: int | None = None
    block_size: int | None = None
    narrow: bool = False
    limit: int | None = None

    def __post_init__(self) -> None:
        if self.dtype not in DTYPE_RANGES:
            raise ValueError(f"unknown quantized dtype {self.dtype!r}")
        scale = np.asarray(self.scale, dtype=np.float32)
        zero = np.asarray(self.zero_point, dtype=np.int64)
        object.__setattr__(self, "scale", scale)
        object.__setattr__(self, "zero_point", zero)
        if scale.shape != zero.shape:
            raise ValueError(f"scale shape {scale.shape} != zero point shape {zero.shape}")
        if not np.all(np.isfinite(scale)) or np.any(scale <= 0):
            raise ValueError("scales must be positive and finite")
        lo, hi = DTYPE_RANGES[self.dtype]
        if np.any(zero < lo) or np.any(zero > hi):
            raise ValueError(f"zero point outside {self.dtype} range")
        if self.axis is None and scale.ndim != 0:
            raise ValueError("per-tensor spec needs a scalar scale")
        if self.axis is not None and scale.ndim == 0:
            raise ValueError("per-channel spec needs a 1-D scale")
        if self.block_size is not None and (self.axis is None or self.block_size < 1):
            raise ValueError("blockwise spec needs an axis and a positive block size")

    @property
    def qmin(self) -> int:
        lo = DTYPE_RANGES[self.dtype][0]
        if self.limit is not None:
            return max(lo, -self.limit)
        return lo + 1 if self.narrow and lo < 0 else lo

    @property
    def qmax(self) -> int:
        hi = DTYPE_RANGES[self.dtype][1]
        return min(hi, self.limit) if self.limit is not None else hi

    @property
    def symmetric(self) -> bool:
        return bool(np.all(self.zero_point == 0))

    @property
    def bits(self) -> int:
        return {"int8": 8, "uint8": 8, "int4": 4, "uint4": 4, "int32": 32}[self.dtype]

    def representable_range(self) -> tuple[float, float]:
        """Smallest and largest real value a per-tensor spec can express."""
        s, z = float(self.scale.max()), float(self.zero_point.max())
        return (self.qmin - z) * s, (self.qmax - z) * s

    def same_as(self, other: QuantSpec) -> bool:
        return (self.dtype == other.dtype and self.axis == other.axis
                and self.block_size == other.block_size
                and np.array_equal(self.scale, other.scale)
                and np.array_equal(self.zero_point, other.zero_point))

    def to_dict(self) -> dict[str, object]:
        return {"dtype": self.dtype, "scale": self.scale.tolist(),
                "zero_point": self.zero_point.tolist(), "axis": self.axis,
                "block_size": self.block_size, "narrow": self.narrow, "limit": self.limit}


@dataclass(frozen=True)
class NodeDecision:
    """Precision chosen for one node and why (traceable to the ONNX node name). ``integer_only``: the node
    computes no float value (shape arithmetic, indices), so no precision applies to it. ``wide``: an
    ``INT8`` node whose activations are int16 (``Precision.INT16`` asked)."""

    precision: Precision
    reason: str
    integer_only: bool = False
    wide: bool = False

    @property
    def label(self) -> str:
        """The precision as reports name it: ``int16`` for a wide node."""
        return Precision.INT16.value if self.wide else self.precision.value


@dataclass
class QuantPlan:
    """Tensor name → spec, node name → precision decision, plus ops folded into a Q clamp."""

    tensors: dict[str, QuantSpec] = field(default_factory=dict)
    nodes: dict[str, NodeDecision] = field(default_factory=dict)
    folded_activations: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def precision_of(self, node_name: str) -> Precision:
        decision = self.nodes.get(node_name)
        return decision.precision if decision else Precision.FP32

    def histogram(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for decision in self.nodes.values():
            key = "integer" if decision.integer_only else decision.label
            counts[key] = counts.get(key, 0) + 1
        return dict(sorted(counts.items()))

    def to_dict(self) -> dict[str, object]:
        return {
            "nodes": {name: {"precision": d.precision.value, "reason": d.reason} | (
                          {"integer_only": True} if d.integer_only else {}) | (
                          {"activations": "int16"} if d.wide else {})
                      for name, d in sorted(self.nodes.items())},
            "tensors": {name: spec.to_dict() for name, spec in sorted(self.tensors.items())},
            "folded_activations": dict(sorted(self.folded_activations.items())),
            "notes": list(self.notes),
        }
