"""Checks and repairs on a parsed ONNX model before anything else reads it.

Foreign file formats, node names (every node named, no duplicates, deterministic), graph inputs
dsqc can feed, domains, dangling tensors and cycles. Every refusal is one ``DsqcError`` line naming
the file, node or tensor and what to do.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

import networkx as nx
import onnx

from dsqc.errors import ModelError, UnsupportedError
from dsqc.ir import DEFAULT_DOMAINS

log = logging.getLogger(__name__)

KNOWN_DOMAINS = (*DEFAULT_DOMAINS, "com.microsoft")
MAX_SAMPLE_ELEMENTS = 2**31 - 1  # int32 indexing in ORT kernels, TFLite and the HLS C
# Leading bytes of formats users pass by mistake → (what it is, what to do).
_FOREIGN = (
    (4, b"TFL3", "a TFLite flatbuffer", "dsqc reads ONNX; convert the original model to ONNX"),
    (4, b"ORTM", "an ORT-format model (.ort)", "give dsqc the .onnx it was converted from"),
    (0, b"PK\x03\x04", "a zip archive (a PyTorch checkpoint?)",
     "export it with `dsqc export module:factory -o model.onnx` or torch.onnx.export"),
    (0, b"\x89HDF", "an HDF5 file (a Keras model?)", "convert it to ONNX first (e.g. tf2onnx)"),
    (0, b"\x1f\x8b", "a gzip file", "decompress it first"),
    (0, b"\x80", "a Python pickle (a PyTorch checkpoint?)",
     "export it with `dsqc export module:factory -o model.onnx` or torch.onnx.export"),
)


def foreign_format(head: bytes) -> tuple[str, str] | None:
    """``(what the file is, what to do)`` when its first bytes say it is not ONNX, else None.

    A serialized ModelProto starts with a field tag; ``ir_version`` (0x08) comes first in every
    file onnx writes, so only formats whose magic cannot be a valid first tag are named here.
    """
    for offset, magic, what, todo in _FOREIGN:
        if head[offset:offset + len(magic)] == magic:
            return what, todo
    if head and all(32 <= b < 127 or b in b"\t\r\n" for b in head):
        return "a text file", "give dsqc the binary .onnx file (a .onnx saved as text is not read)"
    return None


def _graphs(graph: onnx.GraphProto, prefix: str = "") -> Iterator[tuple[str, onnx.GraphProto]]:
    """The graph and every subgraph (If/Loop/Scan bodies), each with its owner's name as prefix."""
    yield prefix, graph
    for node in graph.node:
        for attr in node.attribute:
            subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
            for sub in subs:
                yield from _graphs(sub, f"{prefix}{node.name}/{attr.name}/")


def name_nodes(proto: onnx.ModelProto, label: str) -> None:
    """Give every unnamed node a name and rename later duplicates, deterministically, in place.

    Names already given (first occurrence) are kept. An unnamed node becomes ``<OpType>_<index>``
    (its position in its graph; subgraph nodes prefixed by ``<owner>/<attribute>/``), a duplicate
    ``<name>_<k>``, with the first free ``k``. The same file always gets the same names.
    """
    taken = {node.name for _, graph in _graphs(proto.graph) for node in graph.node if node.name}
    seen: set[str] = set()
    renamed: list[str] = []
    unnamed = 0

    def fresh(base: str) -> str:
        k, name = 0, base
        while name in taken:
            k += 1
            name = f"{base}_{k}"
        taken.add(name)
        return name

    # Iterative walk: names given to a node change the prefix of its subgraphs, so name level by level.
    pending = [("", proto.graph)]
    while pending:
        prefix, graph = pending.pop(0)
        for index, node in enumerate(graph.node):
            if not node.name:
                node.name = fresh(f"{prefix}{node.op_type}_{index}")
                unnamed += 1
            elif node.name in seen:
                old = node.name
                node.name = fresh(old)
                renamed.append(f"'{old}' -> '{node.name}'")
            seen.add(node.name)
            for attr in node.attribute:
                subs = [attr.g] if attr.type == onnx.AttributeProto.GRAPH else list(attr.graphs)
                pending.extend((f"{node.name}/{attr.name}/", sub) for sub in subs)
    if unnamed:
        log.info("%s: named %d unnamed nodes <OpType>_<index>", label, unnamed)
    if renamed:
        log.warning("%s: node names must be unique; renamed %d duplicates: %s", label, len(renamed),
                    ", ".join(renamed[:5]) + (" ..." if len(renamed) > 5 else ""))


def check_structure(proto: onnx.ModelProto, label: str) -> None:
    """Domains, dangling inputs and cycles, with messages naming the node and tensor."""
    graph = proto.graph
    for node in graph.node:
        if node.domain not in KNOWN_DOMAINS:
            raise UnsupportedError(
                f"{label}: node '{node.name}' uses op '{node.op_type}' from unknown domain "
                f"'{node.domain}'; dsqc handles standard ONNX ops only: replace or remove it")
    _check_ops(proto, label)
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


def _check_ops(proto: onnx.ModelProto, label: str) -> None:
    """A standard opset is imported, and it defines every standard-domain op the graph uses."""
    opset = next((int(o.version) for o in proto.opset_import if o.domain in DEFAULT_DOMAINS), None)
    local = {(f.domain, f.name) for f in proto.functions}
    for node in proto.graph.node:
        if node.domain not in DEFAULT_DOMAINS or (node.domain, node.op_type) in local:
            continue
        if opset is None:
            raise ModelError(
                f"{label}: the model imports no standard ONNX opset (opset_import has no domain ''; "
                "a truncated file or a broken export); export the model again")
        if not onnx.defs.has(node.op_type, node.domain):
            raise UnsupportedError(
                f"{label}: node '{node.name}' uses op '{node.op_type}', which is not an ONNX operator; "
                "replace it with standard ops")
        try:
            onnx.defs.get_schema(node.op_type, opset, node.domain)
        except onnx.defs.SchemaError:
            first = onnx.defs.get_schema(node.op_type, node.domain).since_version
            raise UnsupportedError(
                f"{label}: node '{node.name}' uses op '{node.op_type}', which ONNX defines from opset "
                f"{first} but the model imports opset {opset}; export it again at opset {first} or "
                "newer") from None


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
    names = [proto.graph.node[a].name for a, _ in cycle]
    raise ModelError(f"{label}: graph has a cycle through nodes {' -> '.join([*names, names[0]])}")


_NOT_FED = {onnx.TensorProto.BFLOAT16: "bfloat16", onnx.TensorProto.COMPLEX64: "complex64",
            onnx.TensorProto.COMPLEX128: "complex128", onnx.TensorProto.UNDEFINED: "undefined"}


def check_inputs(proto: onnx.ModelProto, label: str) -> None:
    """Graph inputs dsqc can feed: tensors of a numpy type, no empty axis, int32-indexable samples."""
    inits = {t.name for t in proto.graph.initializer}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        kind = vi.type.WhichOneof("value")
        if kind != "tensor_type":
            what = (kind or "no_type")[:-5].replace("_", " ")
            raise UnsupportedError(
                f"{label}: input '{vi.name}' is a {what}, not a tensor; dsqc "
                "feeds tensors only: re-export with tensor inputs")
        tt = vi.type.tensor_type
        if tt.elem_type in _NOT_FED:
            raise UnsupportedError(
                f"{label}: input '{vi.name}' is {_NOT_FED[tt.elem_type]}, which calibration data "
                "(numpy) cannot hold; re-export the model with float32 or float16 inputs")
        dims = [d.dim_value if d.HasField("dim_value") else None for d in tt.shape.dim]
        for axis, dim in enumerate(dims):
            if dim == 0:
                raise ModelError(
                    f"{label}: input '{vi.name}' has size 0 on axis {axis} (shape {_fmt(tt)}): it holds "
                    "no data; re-export the model with the real input size")
        sample = math.prod(d for d in dims[1:] if d)
        if sample > MAX_SAMPLE_ELEMENTS or any(d and d > MAX_SAMPLE_ELEMENTS for d in dims):
            raise ModelError(
                f"{label}: input '{vi.name}' has shape {_fmt(tt)}: over 2^31-1 elements per sample, "
                "beyond the int32 indexing of ORT, TFLite and HLS kernels; re-export with the real size")


def _fmt(tt: onnx.TypeProto.Tensor) -> str:
    dims = [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in tt.shape.dim]
    return "[" + ",".join(dims) + "]"
