"""FP16 float islands for a strongly typed TensorRT network.

A strongly typed network runs every unquantized layer in the graph's own float type, so FP16
must be in the ONNX: every float32 initializer, Constant and Cast target becomes float16, Q/DQ
scales included (a DequantizeLinear's output type is its scale's type, so the int8 kernels then
write FP16). Graph inputs and outputs stay float32 behind one Cast each, so the model's interface
does not change. Opset becomes ≥ 19 (QuantizeLinear of float16 input).

Exact: int8/int4 values and zero points are untouched; the calibration cache keeps the float32
scales. Not exact, and reported: float weights and biases round to FP16, and each Q/DQ scale
rounds to the nearest FP16 (``scale_max_rel_change``); a scale below the FP16 normal range
(6.1e-5) loses precision (``subnormal_scales``); one that would become 0 or inf is an error.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.errors import UnsupportedError
from dsqc.model_io import upgrade_opset
from dsqc.op_kinds import QDQ_OPS

from ._graph import GraphIndex
from .lower import drop_unused_initializers

FP16_OPSET = 19
# (op, input slot) that must stay float32 whatever the data type.
_KEEP_FLOAT32 = {("Resize", 1), ("Resize", 2), ("Upsample", 1)}
_FP16_TINY = float(np.finfo(np.float16).tiny)


@dataclass
class Fp16Report:
    converted: int = 0
    scales: int = 0
    scale_max_rel_change: float = 0.0
    subnormal_scales: list[str] = field(default_factory=list)
    overflowed: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {"converted_tensors": self.converted, "qdq_scales": self.scales,
                "scale_max_rel_change": self.scale_max_rel_change,
                "subnormal_scales": len(self.subnormal_scales), "overflowed_tensors": self.overflowed}


def to_fp16(proto: onnx.ModelProto) -> tuple[onnx.ModelProto, Fp16Report]:
    """Return a copy of ``proto`` whose float computation is FP16, with float32 inputs/outputs."""
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    if any(a.HasField("g") or len(a.graphs) for n in model.graph.node for a in n.attribute):
        raise UnsupportedError("fp16: models with If/Loop/Scan subgraphs are not converted; build without "
                               "fp16 or convert them beforehand")
    if GraphIndex(model).opset < FP16_OPSET:
        model = upgrade_opset(model, FP16_OPSET)
    graph = model.graph
    report = Fp16Report()
    scale_names = {n.input[1] for n in graph.node if n.op_type in QDQ_OPS and len(n.input) > 1}
    kept = _split_float32_slots(graph)
    drop_unused_initializers(model)
    for tensor in graph.initializer:
        if tensor.name not in kept:
            _convert(tensor, tensor.name in scale_names, report)
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.TENSOR:
                _convert(attr.t, node.output[0] in scale_names, report)
        if node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
    _cast_interface(graph)
    del graph.value_info[:]
    model = onnx.shape_inference.infer_shapes(model)
    return model, report


def _convert(tensor: TensorProto, is_scale: bool, report: Fp16Report) -> None:
    if tensor.data_type != TensorProto.FLOAT:
        return
    values = numpy_helper.to_array(tensor)
    with np.errstate(over="ignore"):
        half = values.astype(np.float16)
    finite = np.isfinite(values)
    if np.any(finite & ~np.isfinite(half)):
        report.overflowed.append(tensor.name)
    if is_scale:
        if np.any(half == 0) or not np.all(np.isfinite(half)):
            raise UnsupportedError(f"fp16: Q/DQ scale '{tensor.name}' (min {values.min():.3g}, max "
                                   f"{values.max():.3g}) has no FP16 value; build without fp16")
        rel = np.abs(half.astype(np.float64) - values) / values.astype(np.float64)
        report.scales += int(values.size)
        report.scale_max_rel_change = max(report.scale_max_rel_change, float(rel.max(initial=0.0)))
        if np.any(values < _FP16_TINY):
            report.subnormal_scales.append(tensor.name)
    tensor.CopyFrom(numpy_helper.from_array(half, tensor.name))
    report.converted += 1


def _split_float32_slots(graph: onnx.GraphProto) -> set[str]:
    """Initializers read by a slot that must stay float32 get a float32 copy there; returns the copies."""
    inits = {t.name: t for t in graph.initializer}
    kept: set[str] = set()
    for node in graph.node:
        for slot, name in enumerate(node.input):
            if (node.op_type, slot) not in _KEEP_FLOAT32 or name not in inits:
                continue
            copy_name = f"{name}_float32"
            if copy_name not in kept:
                copy = TensorProto()
                copy.CopyFrom(inits[name])
                copy.name = copy_name
                graph.initializer.append(copy)
                kept.add(copy_name)
            node.input[slot] = copy_name
    return kept


def _cast_interface(graph: onnx.GraphProto) -> None:
    """Float32 graph inputs/outputs stay float32: Cast to FP16 after each input, back before each output."""
    nodes: list[onnx.NodeProto] = []
    for inp in graph.input:
        if inp.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = f"{inp.name}_fp16"
        for node in graph.node:
            for slot, name in enumerate(node.input):
                if name == inp.name:
                    node.input[slot] = inner
        nodes.append(helper.make_node("Cast", [inp.name], [inner], name=f"{inp.name}_to_fp16",
                                      to=TensorProto.FLOAT16))
    tail: list[onnx.NodeProto] = []
    for out in graph.output:
        if out.type.tensor_type.elem_type != TensorProto.FLOAT:
            continue
        inner = f"{out.name}_fp16"
        for node in graph.node:
            for slot, name in enumerate(node.output):
                if name == out.name:
                    node.output[slot] = inner
            for slot, name in enumerate(node.input):
                if name == out.name:
                    node.input[slot] = inner
        tail.append(helper.make_node("Cast", [inner], [out.name], name=f"{out.name}_to_fp32",
                                     to=TensorProto.FLOAT))
    body = [*nodes, *graph.node, *tail]
    del graph.node[:]
    graph.node.extend(body)
