"""Dynamic quantization in the canonical IR: int8 per-channel weights, activations quantized at run time.

A node chosen for dynamic quantization reads its activation through ``DynamicQuantizeLinear →
DequantizeLinear`` (the scale and zero point are computed from the tensor at run time, uint8
asymmetric, per tensor) and its weight through ``DequantizeLinear`` of a constant int8 tensor
(symmetric, per output channel, [-127, 127]). That is standard ONNX, so ORT runs it as the reference;
the ``onnx`` backend rewrites it into integer kernels (``backends/onnx/dynamic.py``). A target whose
kernels measure each row (``TargetProfile.dynamic_scale = "row"``, ``tflite``) gets a per-row quantizer
instead (``dsqc.quant.run_time_scales``), which its backend turns into hybrid kernels
(``backends/tflite/dynamic.py``).

Candidates: MatMul with a constant 2-D weight, Gemm (``transA = 0``, ``alpha = beta = 1``) with a constant
weight, 2-D Conv with a constant weight. Activation × activation MatMuls (attention) stay float: their
int8 kernels would quantize both operands per tensor at run time and they are a small part of the time.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dsqc.ir import default_opset
from dsqc.model_io import upgrade_opset
from dsqc.quant import run_time_scales
from dsqc.quant.spec import NodeDecision, Precision, QuantPlan, QuantSpec

MODES = ("static", "dynamic", "auto")
SCALES = ("tensor", "row")  # TargetProfile.dynamic_scale
DYNAMIC_REASON = {
    "tensor": "dynamic: int8 per-channel weights, activations quantized at run time (uint8, per tensor)",
    "row": "dynamic: int8 per-channel weights, activations quantized at run time (int8, per row of a MatMul "
           "input, per image of a Conv input)",
}
WEIGHT_LIMIT = 127
MIN_OPSET = 13


@dataclass(frozen=True)
class Candidate:
    """A node that can run dynamically quantized: its activation input, weight initializer and axis."""

    node: str
    op: str
    activation: str
    weight: str
    axis: int  # output-channel axis of the weight


def candidates(model: onnx.ModelProto) -> list[Candidate]:
    """Nodes with a constant float weight that the dynamic kernels take, in graph order."""
    inits = {i.name: i for i in model.graph.initializer}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        init = inits.get(node.input[1])
        if init is None or init.data_type != onnx.TensorProto.FLOAT or node.input[0] in inits:
            continue
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        dims = len(init.dims)
        if node.op_type == "MatMul" and dims == 2:
            found.append(Candidate(node.name, "MatMul", node.input[0], init.name, 1))
        elif node.op_type == "Gemm" and dims == 2 and not attrs.get("transA", 0) \
                and attrs.get("alpha", 1.0) == 1.0 and attrs.get("beta", 1.0) == 1.0:
            axis = 0 if attrs.get("transB") else 1
            found.append(Candidate(node.name, "Gemm", node.input[0], init.name, axis))
        elif node.op_type == "Conv" and dims == 4:
            found.append(Candidate(node.name, "Conv", node.input[0], init.name, 0))
    return found


def quantize_weight(weight: np.ndarray, axis: int | None) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric int8 in [-127, 127], per output channel along ``axis`` (``None``: one scale):
    ``(int8 values, float32 scales)``."""
    if axis is None:
        amax = np.asarray(np.abs(weight).max(), np.float32)
        scale = np.asarray(amax / WEIGHT_LIMIT if amax > 0 else 1.0, np.float32)
        return np.clip(np.rint(weight / scale), -WEIGHT_LIMIT, WEIGHT_LIMIT).astype(np.int8), scale
    moved = np.moveaxis(weight.astype(np.float32), axis, 0)
    amax = np.abs(moved.reshape(moved.shape[0], -1)).max(axis=1)
    scale = np.where(amax > 0, amax / WEIGHT_LIMIT, 1.0).astype(np.float32)
    view = [1] * weight.ndim
    view[axis] = -1
    q = np.clip(np.rint(weight / scale.reshape(view)), -WEIGHT_LIMIT, WEIGHT_LIMIT).astype(np.int8)
    return q, scale


def insert_dynamic(model: onnx.ModelProto, chosen: list[Candidate], plan: QuantPlan,
                   reasons: dict[str, str] | None = None, per_tensor: set[str] | None = None,
                   activation_scale: str = "tensor") -> onnx.ModelProto:
    """A copy of ``model`` with ``chosen`` nodes dynamically quantized: the activation through
    DynamicQuantizeLinear → DequantizeLinear (``activation_scale="tensor"``) or a per-row quantizer
    (``"row"``), the weight through DequantizeLinear of int8 (per output channel, or one scale for the
    nodes in ``per_tensor``); ``plan`` records the node decisions and weight specs."""
    if activation_scale not in SCALES:
        raise ValueError(f"dynamic activation scale {activation_scale!r}: one of {SCALES}")
    if default_opset(model) < MIN_OPSET:  # per-channel DequantizeLinear (axis) needs opset 13
        model = upgrade_opset(model, MIN_OPSET)
    out = onnx.ModelProto()
    out.CopyFrom(model)
    graph = out.graph
    taken = {t for n in graph.node for t in n.output} | {i.name for i in graph.initializer} | \
        {i.name for i in graph.input}
    inits = {i.name: i for i in graph.initializer}
    by_name = {n.name: n for n in graph.node}
    # (activation tensor, quantizer) → its fake-quantized name, shared by readers
    activations: dict[tuple[str, str], str] = {}
    new_nodes: dict[str, list[onnx.NodeProto]] = {}  # inserted before the named node
    replaced_weights: set[str] = set()
    for cand in chosen:
        node = by_name[cand.node]
        before = new_nodes.setdefault(cand.node, [])
        per = "tensor" if activation_scale == "tensor" else run_time_scales.quantizer_op(cand.op)
        key = (cand.activation, per)
        if key not in activations:
            base = _unique(cand.activation, taken)
            activations[key] = f"{base}_dyndq"
            before.extend(activation_quantizer(activation_scale, cand.op, cand.activation, activations[key],
                                               base))
        node.input[0] = activations[key]
        weight = numpy_helper.to_array(inits[cand.weight])
        axis = None if cand.node in (per_tensor or set()) else cand.axis
        qw, scale = quantize_weight(weight, axis)
        wname = f"{cand.weight}_quantized" if cand.weight not in replaced_weights else f"{cand.node}_w"
        replaced_weights.add(cand.weight)
        zero = np.zeros_like(scale, np.int8)
        graph.initializer.extend([numpy_helper.from_array(qw, wname),
                                  numpy_helper.from_array(scale, f"{wname}_scale"),
                                  numpy_helper.from_array(zero, f"{wname}_zero_point")])
        deq = f"{wname}_dequantized"
        before.append(helper.make_node("DequantizeLinear", [wname, f"{wname}_scale", f"{wname}_zero_point"],
                                       [deq], name=f"{wname}_DequantizeLinear", axis=axis or 0))
        node.input[1] = deq
        why = (reasons or {}).get(cand.node, DYNAMIC_REASON[activation_scale])
        plan.nodes[cand.node] = NodeDecision(Precision.INT8, why)
        plan.tensors[cand.weight] = QuantSpec("int8", scale, np.zeros(scale.shape, np.int64), axis=axis,
                                              narrow=True)
    ordered: list[onnx.NodeProto] = []
    for node in graph.node:
        ordered.extend(new_nodes.get(node.name, []))
        ordered.append(node)
    # an activation quantized for several readers: its DynamicQuantizeLinear must precede the first
    ordered = _toposort(ordered, {i.name for i in graph.input} | {i.name for i in graph.initializer})
    del graph.node[:]
    graph.node.extend(ordered)
    used = {name for n in graph.node for name in n.input}
    kept = [i for i in graph.initializer if i.name in used or i.name in {o.name for o in graph.output}]
    del graph.initializer[:]
    graph.initializer.extend(kept)
    run_time_scales.add_functions(out)
    return out


def activation_quantizer(activation_scale: str, op: str, x: str, out: str, base: str) -> list[onnx.NodeProto]:
    """The nodes that quantize the input ``x`` of a dynamic ``op`` at run time into ``out`` (its values as
    the kernel multiplies them), named from ``base``: ``DynamicQuantizeLinear → DequantizeLinear`` for
    ``activation_scale="tensor"``, the per-row (per-image for Conv) quantizer for ``"row"``."""
    if activation_scale == "tensor":
        q, s, z = f"{base}_dynq", f"{base}_dyns", f"{base}_dynzp"
        return [helper.make_node("DynamicQuantizeLinear", [x], [q, s, z],
                                 name=f"{base}_DynamicQuantizeLinear"),
                helper.make_node("DequantizeLinear", [q, s, z], [out], name=f"{base}_DequantizeLinear")]
    kind = run_time_scales.quantizer_op(op)
    return [run_time_scales.quantizer_node(kind, x, out, f"{base}_{kind}")]


def dynamic_nodes(model: onnx.ModelProto) -> dict[str, tuple[str, str]]:
    """Nodes of a canonical model that read a run-time quantized activation: name → (activation
    tensor before quantization, weight DequantizeLinear output)."""
    producers = {o: n for n in model.graph.node for o in n.output}
    found = {}
    for node in model.graph.node:
        if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
            continue
        dq = producers.get(node.input[0])
        if dq is not None and run_time_scales.is_quantizer(dq):
            found[node.name] = (dq.input[0], node.input[1])
            continue
        dyn = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        if dyn is not None and dyn.op_type == "DynamicQuantizeLinear":
            found[node.name] = (dyn.input[0], node.input[1])
    return found


def _unique(name: str, taken: set[str]) -> str:
    """A prefix for the tensors quantizing ``name`` that no tensor of the graph starts with yet."""
    base = name.replace("/", "_").strip("_") or "x"
    prefix, k = base, 1
    while any(t.startswith(f"{prefix}_dyn") for t in taken):
        prefix, k = f"{base}_{k}", k + 1
    taken.update(f"{prefix}_{s}" for s in ("dynq", "dyns", "dynzp", "dyndq"))
    return prefix


def _toposort(nodes: list[onnx.NodeProto], known: set[str]) -> list[onnx.NodeProto]:
    """Stable topological order (nodes whose inputs are ready keep their relative order)."""
    ready = set(known) | {""}
    pending = list(nodes)
    ordered: list[onnx.NodeProto] = []
    while pending:
        rest = []
        for node in pending:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                rest.append(node)
        if len(rest) == len(pending):  # inputs from outside this graph (subgraph captures): keep order
            ordered.extend(rest)
            break
        pending = rest
    return ordered
