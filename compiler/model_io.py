"""Loading ONNX files safely: parse, external data confinement, structure, checker, opset, shapes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
from google.protobuf.message import DecodeError

from dsqc.errors import ModelError
from dsqc.ir import default_opset
from dsqc.model_checks import check_inputs, check_structure, foreign_format, name_nodes

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 13, 21
INT4_OPSET = 21  # INT4 and INT16 QuantizeLinear/DequantizeLinear
PROTOBUF_LIMIT = 2**31 - 1  # bytes: one serialized ModelProto, and dsqc keeps the weights in it


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read, validate and normalise an ONNX file. Every failure is one ``ModelError`` line."""
    path = Path(path)
    if path.is_dir():
        raise ModelError(f"{path}: is a folder; give the .onnx file inside it")
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    size = path.stat().st_size
    if size == 0:
        raise ModelError(f"{path}: the file is empty (0 bytes); export the model again")
    if size > PROTOBUF_LIMIT:
        raise ModelError(
            f"{path}: {size / 1e9:.2f} GB in one file is over protobuf's 2 GB limit, so it is not a "
            "valid ONNX file; save the weights as external data (onnx.save_model(..., "
            "save_as_external_data=True))")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
        log.debug("%s: protobuf: %s", path, exc)
        raise ModelError(_not_onnx(path, "the protobuf does not parse")) from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(_not_onnx(path, "it parses to an empty graph"))
    _load_external_data(proto, path)
    return prepare(proto, str(path))


def _not_onnx(path: Path, detail: str) -> str:
    with path.open("rb") as f:
        foreign = foreign_format(f.read(64))
    if foreign:
        return f"{path}: this is {foreign[0]}, not an ONNX model; {foreign[1]}"
    return f"{path}: not a valid ONNX model ({detail}: truncated, or not ONNX); export the model again"


def prepare(proto: onnx.ModelProto, label: str = "model") -> onnx.ModelProto:
    """Node names, structural checks, onnx.checker, opset normalisation and shape inference."""
    name_nodes(proto, label)
    check_structure(proto, label)
    check_inputs(proto, label)
    try:
        onnx.checker.check_model(proto)
    except (onnx.checker.ValidationError, ValueError) as exc:
        raise ModelError(f"{label}: invalid ONNX: {_first_line(exc)}") from exc
    proto = normalize_opset(proto, label)
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        raise ModelError(f"{label}: shape inference failed: {_first_line(exc)}") from exc
    return proto


def normalize_opset(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Bring the default-domain opset into [13, 21]; say clearly when that is impossible."""
    try:
        version = default_opset(proto)
    except ValueError as exc:
        raise ModelError(f"{label}: the model imports no standard ONNX opset; re-export at opset 17") from exc
    if MIN_OPSET <= version <= MAX_OPSET:
        return proto
    known = onnx.defs.onnx_opset_version()
    if version > known:
        raise ModelError(f"{label}: opset {version} is newer than any ONNX release dsqc knows (up to "
                         f"{known}); export the model again at opset 17")
    target = MIN_OPSET if version < MIN_OPSET else MAX_OPSET
    try:
        converted = onnx.version_converter.convert_version(proto, target)
        onnx.checker.check_model(converted)
    except Exception as exc:  # the converter raises many unrelated types
        raise ModelError(
            f"{label}: opset {version} is outside the supported range {MIN_OPSET}-{MAX_OPSET} and "
            f"conversion to {target} failed ({_first_line(exc)}); re-export at opset 17") from exc
    log.info("%s: converted opset %d -> %d", label, version, target)
    return converted


def at_least_opset(proto: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """``proto`` itself where its default opset is ``version`` or newer, else converted to ``version``."""
    return proto if default_opset(proto) >= version else upgrade_opset(proto, version)


def upgrade_opset(proto: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Convert to a newer default opset (INT4 Q/DQ needs 21)."""
    try:
        converted = onnx.version_converter.convert_version(proto, version)
    except Exception as exc:  # the converter raises many unrelated types
        raise ModelError(f"cannot convert the model to opset {version}: {_first_line(exc)}") from exc
    converted.ir_version = max(converted.ir_version, 10)
    return converted


_ELEMENT_BYTES: dict[int, int] = {
    onnx.TensorProto.FLOAT: 4, onnx.TensorProto.DOUBLE: 8, onnx.TensorProto.FLOAT16: 2,
    onnx.TensorProto.BFLOAT16: 2, onnx.TensorProto.INT8: 1, onnx.TensorProto.UINT8: 1,
    onnx.TensorProto.INT16: 2, onnx.TensorProto.UINT16: 2, onnx.TensorProto.INT32: 4,
    onnx.TensorProto.UINT32: 4, onnx.TensorProto.INT64: 8, onnx.TensorProto.UINT64: 8,
    onnx.TensorProto.BOOL: 1}


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Check every external-data reference (folder, symlinks, sizes, 2 GB), then load the data."""
    base = path.resolve().parent
    external = [t for t in onnx.external_data_helper._get_all_tensors(proto)
                if onnx.external_data_helper.uses_external_data(t)]
    total = proto.ByteSize()
    for tensor in external:
        total += _check_external(tensor, path, base)
        if total > PROTOBUF_LIMIT:
            raise ModelError(
                f"{path}: the weights come to over 2 GB (at initializer '{tensor.name}'); dsqc holds a "
                "model in one protobuf, which cannot exceed 2 GB: quantize a smaller model or split it")
    if external:
        try:
            onnx.load_external_data_for_model(proto, str(base))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read external data: {_first_line(exc)}") from exc


def _check_external(tensor: onnx.TensorProto, path: Path, base: Path) -> int:
    """The byte count ``tensor`` reads from its data file, after checking where and how much."""
    info = {entry.key: entry.value for entry in tensor.external_data}
    location = info.get("location", "")
    where = f"{path}: initializer '{tensor.name}'"
    if not location:
        raise ModelError(f"{where} uses external data without a location; export the model again")
    target = (base / location).resolve()
    if os.path.isabs(location) or not target.is_relative_to(base):
        inside = Path(os.path.normpath(base / location)).is_relative_to(base) and not os.path.isabs(location)
        how = f", a symlink to '{target}'" if inside else ""
        raise ModelError(
            f"{where} points its external data at '{location}'{how}, outside the model's folder; "
            "copy the data file beside the model")
    if not target.is_file():
        raise ModelError(f"{where} needs external data file '{location}', which is missing")
    try:
        offset = int(info.get("offset", "0"))
        length = int(info["length"]) if "length" in info else None
    except ValueError as exc:
        raise ModelError(f"{where}: external data offset/length are not integers ({exc})") from exc
    count = 1
    for dim in tensor.dims:
        count *= dim
    need = count * _ELEMENT_BYTES[tensor.data_type] if tensor.data_type in _ELEMENT_BYTES else None
    if length is not None and need is not None and length != need:
        raise ModelError(
            f"{where} declares {length} bytes of external data but its shape {list(tensor.dims)} needs "
            f"{need}; the data file and the model do not belong together: export them again")
    span = length if length is not None else need
    size = target.stat().st_size
    if offset < 0 or (span is not None and offset + span > size):
        raise ModelError(
            f"{where} needs bytes {offset}..{offset + (span or 0)} of '{location}', which holds {size}; "
            "the data file is truncated or not this model's: copy it again")
    return span if span is not None else size - offset


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Write a model; over ~1.8 GB the weights go to ``<name>.data`` beside it."""
    large = proto.ByteSize() > 1_800_000_000
    onnx.save_model(proto, str(path), save_as_external_data=large,
                    location=f"{path.name}.data" if large else None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
