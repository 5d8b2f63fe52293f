"""TensorRT ≤ 10 calibration cache: ``TRT-<version>-EntropyCalibration2`` then ``<tensor>: <8 hex>`` lines.

Each value is the big-endian IEEE-754 float32 bit pattern of the tensor's scale (amax / 127),
the format ``IInt8Calibrator.readCalibrationCache`` consumes, trtexec's ``--calib=`` reads and
NVIDIA ModelOpt parses with ``struct.unpack("!f", bytes.fromhex(hex))``. Tensor names are the ONNX
tensor names, which is how TensorRT's ONNX parser names network tensors; the cache belongs to the
FP32 network (implicit quantization), so names are those of the FP32 model.

Version digits follow ``NV_TENSORRT_VERSION``: major·1000 + minor·100 + patch up to 9.x
(``TRT-8601`` = 8.6.1), major·10000 + minor·100 + patch from 10.0 (``TRT-100300`` = 10.3.0).
TensorRT reuses a cache only when the header matches its own version and calibrator type.
"""

from __future__ import annotations

import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import onnx

from dsqc.errors import RecipeError, UnsupportedError

from ._graph import GraphIndex

DEFAULT_TRT_VERSION = "10.3.0"
ALGORITHM = "EntropyCalibration2"
_HEADER = re.compile(r"^TRT-(\d+)-(\w+)$")


def version_digits(version: str) -> str:
    """``"10.3.0"`` → ``"100300"``, ``"8.6.1"`` → ``"8601"``; a digit string passes through."""
    text = version.strip()
    if text.isdigit():
        return text
    match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.\d+)?", text)
    if not match:
        raise RecipeError(f"trt_version {version!r}: give a TensorRT version like 10.3.0 or header digits "
                          "like 100300")
    major, minor, patch = int(match[1]), int(match[2]), int(match[3] or 0)
    if minor > 99 or patch > 99:
        raise RecipeError(f"trt_version {version!r}: minor and patch must be below 100")
    factor = 10000 if major >= 10 else 1000
    return str(major * factor + minor * 100 + patch)


def cache_header(version: str = DEFAULT_TRT_VERSION, algorithm: str = ALGORITHM) -> str:
    return f"TRT-{version_digits(version)}-{algorithm}"


def scale_hex(scale: float | np.floating) -> str:
    """Big-endian float32 bits of ``scale`` as 8 lowercase hex digits."""
    return struct.pack(">f", np.float32(scale)).hex()


@dataclass
class CalibrationCache:
    header: str
    scales: dict[str, np.float32] = field(default_factory=dict)


def format_cache(scales: Mapping[str, float | np.floating], header: str) -> str:
    """The cache text: header line, then one ``name: hex`` line per tensor, newline-terminated."""
    if not _HEADER.match(header):
        raise RecipeError(f"calibration cache header {header!r} is not TRT-<digits>-<Calibrator>")
    lines = [header]
    for name, scale in scales.items():
        if "\n" in name or "\r" in name:
            raise UnsupportedError(f"tensor name {name!r} contains a line break: no calibration cache "
                                   "line can hold it")
        value = np.float32(scale)
        if not np.isfinite(value) or value <= 0:
            raise UnsupportedError(f"tensor '{name}': scale {float(value)!r} is not positive and finite")
        lines.append(f"{name}: {scale_hex(value)}")
    return "\n".join(lines) + "\n"


def parse_cache(text: str) -> CalibrationCache:
    """Read a cache as TensorRT does: the header, then ``name: hex`` split at the last colon."""
    lines = text.splitlines()
    if not lines or not _HEADER.match(lines[0].strip()):
        raise UnsupportedError("calibration cache: first line is not TRT-<version>-<Calibrator>")
    cache = CalibrationCache(header=lines[0].strip())
    for number, line in enumerate(lines[1:], start=2):
        if not line.strip():
            continue
        name, sep, value = line.rpartition(": ")
        if not sep or not re.fullmatch(r"[0-9a-fA-F]{8}", value):
            raise UnsupportedError(f"calibration cache line {number}: expected '<tensor>: <8 hex digits>'")
        cache.scales[name] = np.frombuffer(bytes.fromhex(value), dtype=">f4")[0].astype(np.float32)
    return cache


def write_cache(path: Path, scales: Mapping[str, float | np.floating],
                version: str = DEFAULT_TRT_VERSION) -> None:
    path.write_text(format_cache(scales, cache_header(version)), encoding="utf-8", newline="\n")


def read_cache(path: Path) -> CalibrationCache:
    return parse_cache(path.read_text(encoding="utf-8"))


def activation_scales(qdq: onnx.ModelProto,
                      fp32_names: set[str] | None = None) -> tuple[dict[str, np.float32], list[str]]:
    """Per-tensor int8 activation scales of every QuantizeLinear, keyed by the tensor it quantizes.

    Weights (constant Q inputs) are left out: TensorRT computes weight scales itself. With
    ``fp32_names``, a Q input renamed for a quantized graph output (``y_float``) maps back to the
    FP32 name (``y``) the DequantizeLinear restores. Returns the scales (graph order) and notes.
    """
    index = GraphIndex(qdq)
    scales: dict[str, np.float32] = {}
    origin: dict[str, str] = {}
    notes: list[str] = []
    for node in qdq.graph.node:
        if node.op_type != "QuantizeLinear" or index.is_const(node.input[0]):
            continue
        label = node.name or node.output[0]
        scale, zero = index.scale(node), index.zero_point(node)
        if scale is None or scale.size != 1:
            notes.append(f"{label}: scale is not one constant value (per-channel activation?): left out")
            continue
        if _q_dtype(node, zero) != np.int8 or (zero is not None and np.any(zero != 0)):
            notes.append(f"{label}: not symmetric int8: left out")
            continue
        name = node.input[0]
        if fp32_names is not None and name not in fp32_names:
            restored = [d.output[0] for d, _ in index.readers(node.output[0])
                        if d.op_type == "DequantizeLinear" and d.output[0] in index.outputs & fp32_names]
            name = restored[0] if restored else name
        value = np.float32(scale.ravel()[0])
        if name in scales and scales[name] != value:
            raise UnsupportedError(f"tensor '{name}' is quantized by '{origin[name]}' and '{label}' with "
                                   f"different scales ({scales[name]!r} vs {value!r})")
        if ": " in name:
            notes.append(f"tensor '{name}' contains ': ': TensorRT reads it, ModelOpt's parser does not")
        scales.setdefault(name, value)
        origin.setdefault(name, label)
    return scales, notes


def _q_dtype(node: onnx.NodeProto, zero: np.ndarray | None) -> np.dtype | None:
    """Output type of a QuantizeLinear: its zero point's, else ``output_dtype``, else uint8 (ONNX)."""
    if zero is not None:
        return zero.dtype
    for attr in node.attribute:
        if attr.name == "output_dtype" and attr.i:
            return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(attr.i))
    return np.dtype(np.uint8)
