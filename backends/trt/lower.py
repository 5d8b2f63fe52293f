"""Lowering the canonical QDQ model to what TensorRT's ONNX parser accepts.

TensorRT's DequantizeLinear takes int8/int4/fp8 inputs only, so the canonical model's int32 bias
+ DequantizeLinear pairs become float bias initializers holding exactly the values the DQ produces
(``float32(q) · scale``, the ONNX definition with a zero point of 0): ONNX Runtime computes the
same numbers before and after.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from ._graph import GraphIndex


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
    _drop_unused_initializers(model)
    return model, folded


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


def _drop_unused_initializers(model: onnx.ModelProto) -> None:
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
