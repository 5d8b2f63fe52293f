"""Quantized embedding tables on ONNX Runtime: ``DequantizeLinear → Gather`` becomes GatherBlockQuantized.

A DequantizeLinear of a whole table runs at every inference (MiniLM's 30522×384 words: 57 % of an
INT4 model's single-thread time). ORT's ``com.microsoft.GatherBlockQuantized`` dequantizes only the
gathered rows, with the same arithmetic: INT4 tables as they are (blocks along the row), INT8 per-row
tables as uint8 + 128 with ``bits=8`` and the row's scale repeated over power-of-two blocks (the op
takes blocks of 2^k ≥ 16). Outputs equal DQ → Gather exactly; the node keeps the Gather's name.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.ir import proto_index
from dsqc.quant.spec import QuantPlan

log = logging.getLogger(__name__)

_MS_DOMAIN = "com.microsoft"


def lower_tables(proto: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """Copy of ``proto`` with every quantized-table lookup as GatherBlockQuantized."""
    graph = proto.graph
    producers, uses, inits = proto_index(graph)
    found = []
    for gather in graph.node:
        dq = producers.get(gather.input[0]) if gather.op_type == "Gather" and gather.input else None
        if dq is None or dq.op_type != "DequantizeLinear" or _attr(gather, "axis", 0) != 0:
            continue
        if uses[gather.input[0]] == 1 and len(dq.input) > 2 and all(i in inits for i in dq.input[:3]):
            found.append((gather, dq))
    if not found:
        return proto
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    new_nodes: dict[str, onnx.NodeProto] = {}
    dropped: set[str] = set()
    for gather, dq in found:
        lowered = _lower(gather, dq, inits, model.graph)
        if lowered is not None:
            new_nodes[gather.name] = lowered
            dropped.add(dq.name)
    if not new_nodes:
        return model
    body = [new_nodes.get(n.name, n) for n in model.graph.node if n.name not in dropped]
    del model.graph.node[:]
    model.graph.node.extend(body)
    used = {i for n in model.graph.node for i in n.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept)
    if not any(o.domain == _MS_DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(_MS_DOMAIN, 1))
    plan.notes.append(f"{len(new_nodes)} quantized table lookup(s) as com.microsoft.GatherBlockQuantized "
                      "(only the gathered rows are dequantized)")
    return model


def _lower(gather: onnx.NodeProto, dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto],
           graph: onnx.GraphProto) -> onnx.NodeProto | None:
    data, scale, zero = (inits[name] for name in dq.input[:3])
    if len(data.dims) != 2:
        return None
    rows, width = data.dims
    axis, block = _attr(dq, "axis", 1), _attr(dq, "block_size", 0)
    attrs = {"gather_axis": 0, "quantize_axis": 1}
    if data.data_type == TensorProto.INT4 and axis == 1 and block >= 16 and not block & (block - 1) \
            and width % block == 0:
        inputs = [data.name, gather.input[1], scale.name, zero.name]
        attrs["block_size"] = block
    elif data.data_type == TensorProto.INT8 and axis == 0 and list(scale.dims) == [rows]:
        row_block = _power_of_two_block(width)
        if row_block is None:
            return None
        block = row_block
        values = numpy_helper.to_array(data).astype(np.int16) + 128
        zero_values = numpy_helper.to_array(zero).astype(np.int16) + 128
        repeat = width // block
        names = [f"{data.name}_uint8", f"{scale.name}_blocks", f"{zero.name}_uint8_blocks"]
        arrays = [values.astype(np.uint8), np.repeat(numpy_helper.to_array(scale)[:, None], repeat, axis=1),
                  np.repeat(zero_values.astype(np.uint8)[:, None], repeat, axis=1)]
        graph.initializer.extend(numpy_helper.from_array(a, n) for a, n in zip(arrays, names, strict=True))
        inputs = [names[0], gather.input[1], names[1], names[2]]
        attrs |= {"block_size": block, "bits": 8}
    else:
        return None
    node = helper.make_node("GatherBlockQuantized", inputs, list(gather.output), name=gather.name,
                            domain=_MS_DOMAIN)
    node.attribute.extend(helper.make_attribute(k, v) for k, v in attrs.items())
    return node


def _power_of_two_block(width: int) -> int | None:
    """The largest power of two ≥ 16 dividing ``width``."""
    block = width & -width
    return block if block >= 16 else None


def _attr(node: onnx.NodeProto, name: str, default: int) -> int:
    for attr in node.attribute:
        if attr.name == name:
            return int(helper.get_attribute_value(attr))
    return default
