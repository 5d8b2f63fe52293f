"""Lowering the canonical QDQ model to what TensorRT parses and fuses.

``fold_int32_dequantize``: TensorRT's DequantizeLinear takes int8/int4/fp8 inputs only, so the
canonical model's int32 bias + DequantizeLinear pairs become float bias initializers holding
exactly the values the DQ produces (``float32(q) · scale``, zero point 0): exact.

``float_readers_read_float``: the canonical model gives every reader of a quantized tensor a DQ,
float-only readers too (LayerNorm, a transformer's residual Add, Softmax). In TensorRT such a DQ is
a standalone reformat, and it puts int8 noise on a path that runs in float anyway. Those readers
read the float tensor again; the int8 readers keep their DQ. Not exact by design: the lowered
model is the more accurate one, and the backend reports its SQNR in ONNX Runtime.
"""

from __future__ import annotations

from collections.abc import Collection

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from dsqc.op_kinds import QDQ_OPS

from ._graph import INT8_READERS, GraphIndex, conv_residual, node_label


def fold_int32_dequantize(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, list[str]]:
    """Replace each DequantizeLinear of a constant int32 tensor by its float32 result.

    Returns the new model and the names of the folded tensors.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    index = GraphIndex(model)
    folded: list[str] = []
    keep: list[onnx.NodeProto] = []
    new_inits: list[TensorProto] = []
    for node in graph.node:
        if node.op_type != "DequantizeLinear" or index.elem_type(node.input[0]) != TensorProto.INT32:
            keep.append(node)
            continue
        values, scale = index.const(node.input[0]), index.scale(node)
        zero = index.zero_point(node)
        if values is None or scale is None:
            keep.append(node)
            continue
        axis = index.attr(node, "axis", 1)
        result = _dequantize(values, scale, zero, axis)
        new_inits.append(numpy_helper.from_array(result, node.output[0]))
        folded.append(node.output[0])
    del graph.node[:]
    graph.node.extend(keep)
    graph.initializer.extend(new_inits)
    drop_unused_initializers(model)
    return model, folded


def float_readers_read_float(proto: onnx.ModelProto,
                             int8_nodes: Collection[str] = ()) -> tuple[onnx.ModelProto, list[str]]:
    """Point readers without an int8 kernel in TensorRT back at the tensor their Q/DQ pair quantizes.

    Kept: int8-capable readers, the skip input of a Conv+Add residual, nodes named in ``int8_nodes``
    (the plan's int8 decisions, e.g. a Softmax a recipe asked for). Returns the model and the
    labels of the rewired readers.
    """
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    index = GraphIndex(model)
    rewired: list[str] = []
    for node in model.graph.node:
        if node.op_type in QDQ_OPS or node.name in int8_nodes:
            continue
        for slot, name in enumerate(node.input):
            dq = index.producer(name) if name else None
            q = index.producer(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
            if q is None or q.op_type != "QuantizeLinear":
                continue
            if node.op_type in INT8_READERS and (node.op_type != "Add" or conv_residual(index, node, slot)):
                continue
            node.input[slot] = q.input[0]
            rewired.append(node_label(node))
    for op in ("DequantizeLinear", "QuantizeLinear"):  # DQs left without readers, then their Qs
        used = _referenced(model.graph) | {o.name for o in model.graph.output}
        kept = [n for n in model.graph.node if n.op_type != op or n.output[0] in used]
        del model.graph.node[:]
        model.graph.node.extend(kept)
    drop_unused_initializers(model)
    return model, rewired


def _dequantize(values: np.ndarray, scale: np.ndarray, zero: np.ndarray | None, axis: int) -> np.ndarray:
    q = values.astype(np.int64) - (0 if zero is None else _expand(zero.astype(np.int64), values.ndim, axis))
    result = q.astype(np.float32) * _expand(scale.astype(np.float32), values.ndim, axis)
    return np.asarray(result, dtype=np.float32)


def _expand(param: np.ndarray, rank: int, axis: int) -> np.ndarray:
    if param.size == 1 or rank == 0:
        return param.reshape(()) if param.size == 1 else param
    shape = [1] * rank
    shape[axis % rank] = param.size
    return param.reshape(shape)


def drop_unused_initializers(model: onnx.ModelProto) -> None:
    """Remove initializers (and their graph-input entries) that no node or output reads."""
    graph = model.graph
    used = _referenced(graph) | {o.name for o in graph.output}
    unused = [t for t in graph.initializer if t.name not in used]
    for tensor in unused:
        graph.initializer.remove(tensor)
    names = {t.name for t in unused}
    kept_inputs = [i for i in graph.input if i.name not in names]
    if len(kept_inputs) != len(graph.input):
        del graph.input[:]
        graph.input.extend(kept_inputs)


def _referenced(graph: onnx.GraphProto) -> set[str]:
    """Every tensor name a node reads, subgraphs (If/Loop/Scan bodies) included."""
    names: set[str] = set()
    for node in graph.node:
        names.update(node.input)
        for attr in node.attribute:
            for sub in [attr.g] if attr.HasField("g") else list(attr.graphs):
                names |= _referenced(sub)
    return names
