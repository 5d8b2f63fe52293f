"""Float nodes inside a QDQ model on ONNX Runtime: FP16 weight storage, and keeping them float.

FP16 nodes: ORT's CPU kernels compute in float32, so an FP16 node keeps float32
activations and reads its constant inputs (weights, bias) through ``Cast(float16 → float32)``: the file
stores half the bytes, the arithmetic stays float32, and the only error is each weight's rounding to
FP16 (relative 2^-11). ORT folds the Cast when the session starts.

Keeping them float: ORT's ``WeightBiasQuantization`` graph transformer (on at every optimization level)
takes any Conv/ConvTranspose/Gemm whose data input comes from a DequantizeLinear with a *scalar* scale
and a float weight initializer, and quantizes that weight to per-tensor int8 (bias to int32). A node
the plan keeps in FP32/FP16 next to an int8 producer would silently run with per-tensor int8 weights
(measured: 35.9 dB planned → 33.6 dB in ORT on an outlier-heavy conv). Its DQ is therefore written
per-axis on the channel axis with the same scale and zero point repeated — the same values, which the
transformer does not match.
"""

from __future__ import annotations

import logging

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.ir import proto_index
from dsqc.op_kinds import data_channel_axis, input_channels
from dsqc.quant.spec import Precision, QuantPlan

log = logging.getLogger(__name__)

_GUARDED_OPS = ("Conv", "ConvTranspose", "Gemm")
_QUANTIZED = (Precision.INT8, Precision.INT4)
_FP16_MAX = float(np.finfo(np.float16).max)


def fp16_nodes(plan: QuantPlan) -> set[str]:
    return {name for name, d in plan.nodes.items() if d.precision is Precision.FP16}


def finish_float_nodes(proto: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """FP16 weight storage and the ORT float guard (notes go to ``plan``)."""
    return guard_float_readers(store_fp16_weights(proto, plan), plan)


def store_fp16_weights(proto: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """Copy of ``proto`` whose FP16 nodes read float16 initializers through a Cast (notes in ``plan``).

    A weight that would overflow FP16 stays float32; an initializer shared with other nodes keeps its
    float32 copy for them.
    """
    wanted = fp16_nodes(plan)
    if not wanted:
        return proto
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    inits = {t.name: t for t in graph.initializer}
    casts: dict[str, str] = {}
    cast_nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.name not in wanted:
            continue
        for slot, name in enumerate(node.input):
            init = inits.get(name)
            if init is None or init.data_type != TensorProto.FLOAT:
                continue
            if name not in casts:
                values = numpy_helper.to_array(init)
                if np.any(np.abs(values[np.isfinite(values)]) > _FP16_MAX):
                    log.warning("fp16: %s exceeds the FP16 range; kept float32", name)
                    continue
                half = numpy_helper.from_array(values.astype(np.float16), f"{name}_fp16")
                graph.initializer.append(half)
                casts[name] = f"{name}_fp16_as_fp32"
                cast_nodes.append(helper.make_node("Cast", [half.name], [casts[name]],
                                                   name=f"{name}_fp16_Cast", to=TensorProto.FLOAT))
            node.input[slot] = casts[name]
    body = [*cast_nodes, *graph.node]
    del graph.node[:]
    graph.node.extend(body)
    used = {i for n in graph.node for i in n.input} | {o.name for o in graph.output}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    plan.notes.append(f"{len(wanted)} fp16 node(s): {len(casts)} weight tensors stored as float16 + Cast")
    return model


def guard_float_readers(proto: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    """Per-axis (equal-valued) DQs in front of float Conv/ConvTranspose/Gemm nodes (see the module doc)."""
    graph = proto.graph
    producers, readers, inits = proto_index(graph)
    targets = []
    for node in graph.node:
        if node.op_type not in _GUARDED_OPS or plan.precision_of(node.name) in _QUANTIZED:
            continue
        dq = producers.get(node.input[0])
        if dq is None or dq.op_type != "DequantizeLinear" or readers[dq.output[0]] != 1:
            continue
        scale, zero = (inits.get(dq.input[i]) if len(dq.input) > i else None for i in (1, 2))
        axis, channels = _channel_axis(node, producers, inits)
        if scale is None or zero is None or scale.dims or channels is None:
            continue
        targets.append((dq, scale, zero, axis, channels))
    if not targets:
        return proto
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    nodes = {n.name: n for n in model.graph.node}
    for dq, scale, zero, axis, channels in targets:
        copy = nodes[dq.name]
        for slot, init in ((1, scale), (2, zero)):
            values = np.full(channels, numpy_helper.to_array(init))
            name = f"{init.name}_per_axis_{dq.name}"
            model.graph.initializer.append(numpy_helper.from_array(values, name))
            copy.input[slot] = name
        copy.attribute.append(helper.make_attribute("axis", axis))
    plan.notes.append(f"{len(targets)} float Conv/Gemm input DQ(s) written per-axis so that ONNX Runtime "
                      "keeps their weights float")
    return model


def _channel_axis(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
                  inits: dict[str, onnx.TensorProto]) -> tuple[int, int | None]:
    """The data input's channel axis and size, read off the weight's shape."""
    weight = _weight_dims(node.input[1] if len(node.input) > 1 else "", producers, inits)
    if weight is None:
        return 1, None
    return data_channel_axis(node), input_channels(node, weight)


def _weight_dims(name: str, producers: dict[str, onnx.NodeProto],
                 inits: dict[str, onnx.TensorProto]) -> list[int] | None:
    """Dims of a weight given as an initializer, or through a Cast/DequantizeLinear of one."""
    if name in inits:
        return list(inits[name].dims)
    node = producers.get(name)
    if node is not None and node.op_type in ("Cast", "DequantizeLinear") and node.input[0] in inits:
        return list(inits[node.input[0]].dims)
    return None
