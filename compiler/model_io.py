"""Loading ONNX files safely: parse, external data confinement, structure, checker, opset, shapes."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import networkx as nx
import onnx
from google.protobuf.message import DecodeError

from .errors import ModelError, UnsupportedError
from .ir import DEFAULT_DOMAINS, default_opset

log = logging.getLogger(__name__)

MIN_OPSET, MAX_OPSET = 13, 21
INT4_OPSET = 21
KNOWN_DOMAINS = (*DEFAULT_DOMAINS, "com.microsoft")


def load_model(path: str | Path) -> onnx.ModelProto:
    """Read, validate and normalise an ONNX file. Every failure is one ``ModelError`` line."""
    path = Path(path)
    if not path.is_file():
        raise ModelError(f"{path}: no such model file")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, OSError) as exc:
        raise ModelError(f"{path}: not a valid ONNX model (truncated or not ONNX: {exc})") from exc
    if not proto.graph.node and not proto.graph.output:
        raise ModelError(f"{path}: not a valid ONNX model (empty graph; truncated or not ONNX?)")
    _load_external_data(proto, path)
    return prepare(proto, str(path))


def prepare(proto: onnx.ModelProto, label: str = "model") -> onnx.ModelProto:
    """Structural checks, onnx.checker, opset normalisation and shape inference."""
    check_structure(proto, label)
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


def check_structure(proto: onnx.ModelProto, label: str) -> None:
    """Domains, dangling inputs and cycles, with messages naming the node and tensor."""
    graph = proto.graph
    for node in graph.node:
        if node.domain not in KNOWN_DOMAINS:
            raise UnsupportedError(
                f"{label}: node '{node.name}' uses op '{node.op_type}' from unknown domain "
                f"'{node.domain}'; dsqc handles standard ONNX ops only: replace or remove it")
    available = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    available |= {t.name for t in graph.sparse_initializer} | {""}
    produced = {out for node in graph.node for out in node.output}
    for node in graph.node:
        for name in node.input:
            if name not in available and name not in produced:
                raise ModelError(
                    f"{label}: node '{node.name}' ({node.op_type}) reads tensor '{name}' that no "
                    "node, graph input or initializer provides (missing initializer?)")
    for out in graph.output:
        if out.name not in available and out.name not in produced:
            raise ModelError(f"{label}: graph output '{out.name}' is produced by no node")
    _check_acyclic(proto, label)


def _check_acyclic(proto: onnx.ModelProto, label: str) -> None:
    writer = {out: i for i, node in enumerate(proto.graph.node) for out in node.output}
    dg = nx.DiGraph()
    for i, node in enumerate(proto.graph.node):
        dg.add_node(i)
        dg.add_edges_from((writer[name], i) for name in node.input if name in writer)
    try:
        cycle = nx.find_cycle(dg)
    except nx.NetworkXNoCycle:
        return
    names = [proto.graph.node[a].name or proto.graph.node[a].op_type for a, _ in cycle]
    raise ModelError(f"{label}: graph has a cycle through nodes {' -> '.join([*names, names[0]])}")


def normalize_opset(proto: onnx.ModelProto, label: str) -> onnx.ModelProto:
    """Bring the default-domain opset into [13, 21]; say clearly when that is impossible."""
    version = default_opset(proto)
    if MIN_OPSET <= version <= MAX_OPSET:
        return proto
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


def upgrade_opset(proto: onnx.ModelProto, version: int) -> onnx.ModelProto:
    """Convert to a newer default opset (INT4 Q/DQ needs 21)."""
    try:
        converted = onnx.version_converter.convert_version(proto, version)
    except Exception as exc:  # the converter raises many unrelated types
        raise ModelError(f"cannot convert the model to opset {version}: {_first_line(exc)}") from exc
    converted.ir_version = max(converted.ir_version, 10)
    return converted


def _load_external_data(proto: onnx.ModelProto, path: Path) -> None:
    """Refuse external-data locations that leave the model's folder, then load the data."""
    base = path.resolve().parent
    external = [t for t in onnx.external_data_helper._get_all_tensors(proto)
                if onnx.external_data_helper.uses_external_data(t)]
    for tensor in external:
        info = {entry.key: entry.value for entry in tensor.external_data}
        location = info.get("location", "")
        target = (base / location).resolve()
        if os.path.isabs(location) or not target.is_relative_to(base):
            raise ModelError(
                f"{path}: initializer '{tensor.name}' points its external data at '{location}', "
                "outside the model's folder; move the data file beside the model")
        if not target.is_file():
            raise ModelError(
                f"{path}: initializer '{tensor.name}' needs external data file '{location}', "
                "which is missing")
    if external:
        try:
            onnx.load_external_data_for_model(proto, str(base))
        except (OSError, ValueError) as exc:
            raise ModelError(f"{path}: cannot read external data: {_first_line(exc)}") from exc


def save_model(proto: onnx.ModelProto, path: Path) -> None:
    """Write a model; over ~1.8 GB the weights go to ``<name>.data`` beside it."""
    large = proto.ByteSize() > 1_800_000_000
    onnx.save_model(proto, str(path), save_as_external_data=large,
                    location=f"{path.name}.data" if large else None)


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
