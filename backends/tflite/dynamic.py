"""Dynamic-range quantization for LiteRT: int8 weights, float activations, hybrid kernels.

The canonical model's run-time quantized nodes (``DynamicQuantizeLinear → DequantizeLinear`` on the
activation, ``DequantizeLinear`` of int8 on the weight) are lowered as float ops (``strip``), then their
FULLY_CONNECTED / CONV_2D / DEPTHWISE_CONV_2D get the int8 per-output-channel weights back
(``hybridize``): float input, int8 weight, float output is TFLite's hybrid kernel, which quantizes the
input per batch row at run time; ``asymmetric_quantize_inputs`` (FULLY_CONNECTED) selects the
asymmetric scheme, CONV_2D's hybrid per-channel kernel is asymmetric already. Op versions as the
TFLite converter writes them (``op_version.cc``): FULLY_CONNECTED 12, CONV_2D 5, DEPTHWISE_CONV_2D 6.
"""

from __future__ import annotations

import numpy as np
import onnx

from dsqc.quant.dynamic import dynamic_nodes, quantize_weight

from .graph import Graph, QParams

HYBRID_DIM = {"FULLY_CONNECTED": 0, "CONV_2D": 0, "DEPTHWISE_CONV_2D": 3}  # output-channel dim in TFLite
HYBRID_VERSION = {"FULLY_CONNECTED": 12, "CONV_2D": 5, "DEPTHWISE_CONV_2D": 6}


def strip(model: onnx.ModelProto) -> tuple[onnx.ModelProto, set[str]]:
    """The canonical model with run-time activation quantization removed (the hybrid kernels do it) and
    the names of the nodes that had it. Their weight ``DequantizeLinear`` stays: the lowering folds it."""
    found = dynamic_nodes(model)
    if not found:
        return model, set()
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for node in out.graph.node:
        if node.name in found:
            node.input[0] = found[node.name][0]
    needed = {o.name for o in out.graph.output}
    alive = []
    for node in reversed(out.graph.node):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed.update(node.input)
    del out.graph.node[:]
    out.graph.node.extend(reversed(alive))
    return out, set(found)


def hybridize(graph: Graph, nodes: set[str]) -> tuple[list[str], list[str]]:
    """Turn the float ops lowered from ``nodes`` into hybrid ops (int8 per-channel weights). Returns the
    ONNX names of the nodes that did not: (still float, lowered as static int8 ops). A node of an auto
    plan between static int8 neighbours reads and writes int8 tensors with calibrated scales, so the
    lowering gives it the int8 kernel: LiteRT has no hybrid op with an int8 input."""
    done: set[str] = set()
    static: set[str] = set()
    for op in graph.ops:
        if op.origin not in nodes or op.kind not in HYBRID_DIM:
            continue
        x, w = graph.tensors[op.inputs[0]], graph.tensors[op.inputs[1]]
        if x.dtype == "int8" and w.dtype == "int8":
            static.add(op.origin)
        if x.dtype != "float32" or w.data is None or w.dtype != "float32":
            continue
        dim = HYBRID_DIM[op.kind]
        q, scale = quantize_weight(w.data, dim)  # symmetric int8 per output channel, as the QDQ model
        w.data, w.dtype, w.quant = q, "int8", QParams.of(scale, np.zeros(scale.shape, np.int64), dim)
        if op.kind == "FULLY_CONNECTED":
            op.options.asymmetricQuantizeInputs = True
        done.add(op.origin)
    return sorted(nodes - done - static), sorted(static - done)


def hybrid_version(kind: str, graph: Graph, inputs: list[int]) -> int | None:
    """The converter's version of a hybrid op (float input, int8 weight), else None."""
    if kind not in HYBRID_VERSION or len(inputs) < 2 or inputs[1] < 0:
        return None
    x, w = graph.tensors[inputs[0]], graph.tensors[inputs[1]]
    if x.dtype == "float32" and w.dtype == "int8":
        return HYBRID_VERSION[kind]
    return None
