"""The editable IR: an onnx-graphsurgeon graph plus model metadata, and networkx analysis helpers."""

from __future__ import annotations

import copy
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import ml_dtypes
import networkx as nx
import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper
from onnx_graphsurgeon.ir.tensor import LazyValues

DEFAULT_DOMAINS = ("", "ai.onnx")


@dataclass
class Model:
    """A graph being compiled. Passes edit ``graph`` in place and return the same ``Model``."""

    graph: gs.Graph
    opset: int
    source: Path | None = None
    metadata: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_proto(cls, proto: onnx.ModelProto, source: Path | None = None) -> Model:
        graph = gs.import_onnx(proto)
        meta = {p.key: p.value for p in proto.metadata_props}
        return cls(graph=graph, opset=default_opset(proto), source=source, metadata=meta)

    def to_proto(self) -> onnx.ModelProto:
        """Export to ONNX, nodes in topological order, dead tensors dropped."""
        self.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        _pack_four_bit(self.graph)
        proto = gs.export_onnx(self.graph, do_type_check=False)
        for key, value in sorted(self.metadata.items()):
            proto.metadata_props.add(key=key, value=value)
        return proto

    def copy(self) -> Model:
        return Model(self.graph.copy(), self.opset, self.source, dict(self.metadata))


FOUR_BIT = (np.dtype(ml_dtypes.int4), np.dtype(ml_dtypes.uint4))


def _pack_four_bit(graph: gs.Graph) -> None:
    """Hand 4-bit constants (ml_dtypes int4/uint4 arrays) to the exporter as packed TensorProtos.

    onnx-graphsurgeon 0.6 exports a constant's ``tobytes()`` as raw data, one byte per element, which
    onnx >= 1.20 rejects for INT4/UINT4 (two elements per byte); its ``export_dtype`` route is
    disabled there. ``numpy_helper.from_array`` packs them correctly.
    """
    for tensor in graph.tensors().values():
        if isinstance(tensor, gs.Constant) and not isinstance(tensor._values, LazyValues) \
                and np.dtype(tensor.values.dtype) in FOUR_BIT:
            tensor.values = LazyValues(numpy_helper.from_array(np.asarray(tensor.values), tensor.name))


def default_opset(proto: onnx.ModelProto) -> int:
    """Version of the default ONNX domain the model imports."""
    for entry in proto.opset_import:
        if entry.domain in DEFAULT_DOMAINS:
            return int(entry.version)
    raise ValueError("model imports no default-domain opset")


def constant_value(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of a constant tensor (initializer or Constant node output), else ``None``."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if len(tensor.inputs) == 1 and tensor.inputs[0].op == "Constant":
        attrs = tensor.inputs[0].attrs
        value = attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
    return None


def shape_determined(tensor: gs.Tensor, depth: int = 16) -> bool:
    """Whether ``tensor`` is a function of constants and tensor shapes only, never of activation values: a
    constant, or computed from such tensors and ``Shape``/``Size`` outputs (a ViT's class token,
    ``Expand(cls, [batch, 1, d])``). For a given input shape it is a constant."""
    if constant_value(tensor) is not None:
        return True
    node = producer(tensor)
    if node is None or depth == 0:
        return False
    if node.op in ("Shape", "Size"):
        return True
    return all(shape_determined(t, depth - 1) for t in node.inputs if t.name)


def node_reads(node: onnx.NodeProto) -> set[str]:
    """Every tensor name ``node`` reads: its inputs and the inputs of the nodes of its subgraphs (an
    ``If``'s branches, a ``Loop`` body), which include what they take from the enclosing graph."""
    names = {i for i in node.input if i}
    for attr in node.attribute:
        for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
            for inner in sub.node:
                names |= node_reads(inner)
    return names


def producer(tensor: gs.Tensor) -> gs.Node | None:
    """The node writing ``tensor``, or ``None`` for graph inputs and constants."""
    return tensor.inputs[0] if tensor.inputs else None


def consumers(tensor: gs.Tensor) -> list[gs.Node]:
    """Nodes reading ``tensor``."""
    return list(tensor.outputs)


def is_graph_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(out is tensor for out in graph.outputs)


def only_consumer(graph: gs.Graph, tensor: gs.Tensor, node: gs.Node) -> bool:
    """True when ``node`` is the single reader of ``tensor`` and it is not a graph output."""
    readers = consumers(tensor)
    return len(readers) == 1 and readers[0] is node and not is_graph_output(graph, tensor)


def make_constant(graph: gs.Graph, hint: str, values: np.ndarray) -> gs.Constant:
    """A new initializer with a unique name derived from ``hint``."""
    existing = set(graph.tensors().keys())
    name, index = hint, 0
    while name in existing:
        index += 1
        name = f"{hint}_{index}"
    return gs.Constant(name, np.ascontiguousarray(values))


def dataflow(graph: gs.Graph) -> nx.DiGraph:
    """Node-level dataflow graph: an edge a→b when b reads a tensor a writes. Keys are node names."""
    dg = nx.DiGraph()
    for node in graph.nodes:
        dg.add_node(node.name, op=node.op)
    for node in graph.nodes:
        for out in node.outputs:
            for reader in out.outputs:
                dg.add_edge(node.name, reader.name, tensor=out.name)
    return dg


def reaches(dg: nx.DiGraph, source: str, target: str) -> bool:
    """True when data can flow from node ``source`` to node ``target``."""
    return source != target and nx.has_path(dg, source, target)


def op_histogram(nodes: Iterable[gs.Node]) -> dict[str, int]:
    hist: dict[str, int] = {}
    for node in nodes:
        hist[node.op] = hist.get(node.op, 0) + 1
    return dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0])))


def unique_name(hint: str, taken: set[str]) -> str:
    """``hint``, or ``hint_1``, ``hint_2``, … whichever is not in ``taken``; the name is added to it."""
    name, index = hint, 0
    while name in taken:
        index += 1
        name = f"{hint}_{index}"
    taken.add(name)
    return name


def clone_proto(proto: onnx.ModelProto) -> onnx.ModelProto:
    return copy.deepcopy(proto)


def is_used(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    """True when some node reads ``tensor`` or it is a graph output."""
    return bool(tensor.outputs) or is_graph_output(graph, tensor)


def replace_uses(old: gs.Tensor, new: gs.Tensor) -> None:
    """Make every node that reads ``old`` read ``new`` instead (subgraph readers included)."""
    for node in consumers(old):
        for index, tensor in enumerate(node.inputs):
            if tensor is old:
                node.inputs[index] = new


def bypass_refusal(graph: gs.Graph, node: gs.Node, kept: gs.Tensor) -> str | None:
    """Why ``bypass_node(graph, node, kept)`` would refuse, or ``None`` when it would not."""
    out = node.outputs[0]
    if not is_graph_output(graph, out):
        return None
    if producer(kept) is None:
        return f"output {out.name} is a graph output and {kept.name} is a graph input or constant"
    if is_graph_output(graph, kept):
        return f"both {kept.name} and {out.name} are graph outputs"
    return None


def bypass_node(graph: gs.Graph, node: gs.Node, kept: gs.Tensor) -> str | None:
    """Remove single-output ``node`` so that its readers read ``kept`` (one of its inputs) instead.

    When the node's output is a graph output, its producer side is renamed instead: the node that
    writes ``kept`` now writes the graph output, so graph output names stay stable. Returns the reason
    when that is impossible (``kept`` is a graph input, a constant or itself a graph output; see
    ``bypass_refusal``), else ``None``. The node is left disconnected; run ``graph.cleanup()`` afterwards.
    """
    reason = bypass_refusal(graph, node, kept)
    if reason is not None:
        return reason
    out = node.outputs[0]
    if not is_graph_output(graph, out):
        node.inputs.clear()
        node.outputs.clear()
        replace_uses(out, kept)
        return None
    source = producer(kept)
    assert source is not None
    index = next(i for i, t in enumerate(source.outputs) if t is kept)
    node.inputs.clear()
    node.outputs.clear()
    replace_uses(kept, out)
    source.outputs[index] = out
    if out.dtype is None:
        out.dtype = kept.dtype
    if out.shape is None:
        out.shape = kept.shape
    return None


def static_shape(tensor: gs.Tensor) -> tuple[int, ...] | None:
    """The shape of ``tensor`` when every dimension is a known integer, else ``None``."""
    shape = tensor.shape
    if shape is None or not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
        return None
    return tuple(int(d) for d in shape)


def tensor_rank(tensor: gs.Tensor) -> int | None:
    """The rank of ``tensor`` when known (dimensions may be symbolic), else ``None``."""
    return None if tensor.shape is None else len(tensor.shape)


def set_constant_input(
    graph: gs.Graph, node: gs.Node, index: int, values: np.ndarray, hint: str
) -> gs.Constant:
    """Give ``node`` input ``index`` the constant ``values``.

    An initializer read by ``node`` alone is updated in place (its name kept); otherwise (shared,
    a Constant-node output, or an omitted optional input) a new initializer named after ``hint`` is
    created. The input list is padded with omitted inputs when ``index`` is past its end.
    """
    while len(node.inputs) <= index:
        node.inputs.append(gs.Variable.empty())
    current = node.inputs[index]
    sole_reader = len(current.outputs) == 1 and current.outputs[0] is node
    if isinstance(current, gs.Constant) and sole_reader:
        current.values = np.ascontiguousarray(values)
        return current
    fresh = make_constant(graph, hint, values)
    node.inputs[index] = fresh
    return fresh


def _more_static(old: list | None, new: list) -> bool:
    if old is None:
        return True
    known = sum(isinstance(d, (int, np.integer)) for d in new)
    return len(old) == len(new) and known > sum(isinstance(d, (int, np.integer)) for d in old)


def infer_shapes(graph: gs.Graph) -> int:
    """Fill in unknown dtypes and dims of ``graph``'s variables, in place, from ONNX shape
    inference with data propagation (useful after folding made shape inputs constant).

    Known information is never replaced, only completed. Returns how many tensors gained
    information; 0 when inference fails (e.g. a model over 2 GiB).
    """
    graph.toposort()
    try:
        proto = gs.export_onnx(graph, do_type_check=False)
        inferred = onnx.shape_inference.infer_shapes(proto, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError):
        return 0
    infos = {v.name: v.type for v in [*inferred.graph.value_info, *inferred.graph.output]}
    gained = 0
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Constant) or name not in infos:
            continue
        ttype = infos[name].tensor_type
        changed = False
        if tensor.dtype is None and ttype.elem_type:
            tensor.dtype = onnx.helper.tensor_dtype_to_np_dtype(ttype.elem_type)
            changed = True
        if ttype.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else (d.dim_param or None)
                    for d in ttype.shape.dim]
            if _more_static(tensor.shape, dims):
                tensor.shape = dims
                changed = True
        gained += changed
    return gained


class ProtoIndex:
    """Read-only index of a GraphProto (for code that works on protos, not on the editable IR): the
    node writing each tensor, the ``(node, input slot)`` pairs reading it, and constant values
    (initializers and default-domain Constant nodes)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producers: dict[str, onnx.NodeProto] = {}
        self.initializers: dict[str, onnx.TensorProto] = {t.name: t for t in graph.initializer}
        self._constants = dict(self.initializers)
        self._readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS:
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self._constants[node.output[0]] = value
            for name in node.output:
                self.producers[name] = node
            for slot, name in enumerate(node.input):
                if name:
                    self._readers.setdefault(name, []).append((node, slot))

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self.producers.get(name)

    def readers(self, name: str) -> list[tuple[onnx.NodeProto, int]]:
        return self._readers.get(name, [])

    def read_counts(self) -> Counter[str]:
        """How many node inputs read each tensor."""
        return Counter({name: len(readers) for name, readers in self._readers.items()})

    def is_const(self, name: str) -> bool:
        return name in self._constants

    def const(self, name: str) -> np.ndarray | None:
        tensor = self._constants.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def elem_type(self, name: str) -> int | None:
        tensor = self._constants.get(name)
        return None if tensor is None else int(tensor.data_type)


def proto_index(graph: onnx.GraphProto) -> tuple[dict[str, onnx.NodeProto], Counter[str],
                                                 dict[str, onnx.TensorProto]]:
    """For a GraphProto: the node producing each tensor, how many node inputs read each tensor, and the
    initializers by name (a ``ProtoIndex`` as plain mappings)."""
    index = ProtoIndex(graph)
    return index.producers, index.read_counts(), index.initializers
