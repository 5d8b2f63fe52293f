"""An already-quantized QDQ model read back: the FP32 model under its Q/DQ, and the specs to keep.

``split_qdq``: every QuantizeLinear→DequantizeLinear pair on an activation gives that tensor's spec
(scale, zero point, dtype) and is removed; every DequantizeLinear of a constant (weights, int32
biases) gives the constant's spec and is replaced by the dequantized float values, which lie exactly
on that grid (re-quantizing them gives the same integers back). What remains is the FP32 model the
QDQ model stands for (the model a QAT run trained, with its float weights). Where a Q clamps at zero
(zero point = the type's minimum) right after a Conv/Gemm/MatMul/Add, a Relu is put back: dsqc's and
ORT's QDQ models fold Relu into that Q, and Q(relu(x)) = Q(x) there, so the quantized function is
unchanged and the FP32 one is the model's.

``keep_specs``: after the planner has planned the target (placement, fixed outputs, node decisions),
the trained specs replace the planned ones tensor by tensor; only tensors without a trained spec were
calibrated (``trained_stats`` gives the rest as known). Biases follow as ``s_in · s_w``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import numpy_helper

from dsqc.calibration.runner import TensorStats
from dsqc.errors import DsqcError, UnsupportedError
from dsqc.ir import Model, constant_value, unique_name
from dsqc.model_io import prepare
from dsqc.quant.planner import Placement
from dsqc.quant.profile import TargetProfile
from dsqc.quant.qparams import bias_spec, dequantize, quantize
from dsqc.quant.spec import DTYPE_RANGES, QuantPlan, QuantSpec
from dsqc.quant.weights import BIAS_INPUT, WEIGHT_INPUT

SPEC_METADATA = "dsqc.qat.specs"  # model metadata: {tensor: {"narrow", "limit"}} (dsqc.qat.export)
_QDQ = {"QuantizeLinear", "DequantizeLinear"}
_OPERATOR_STYLE = {"QLinearConv", "QLinearMatMul", "ConvInteger", "MatMulInteger", "DynamicQuantizeLinear",
                   "QGemm", "MatMulNBits"}
_DTYPES: dict[int, str] = {onnx.TensorProto.INT8: "int8", onnx.TensorProto.UINT8: "uint8",
                           onnx.TensorProto.INT32: "int32", onnx.TensorProto.INT4: "int4",
                           onnx.TensorProto.UINT4: "uint4"}


class QdqInputError(DsqcError):
    """A QDQ input model dsqc cannot read its scales from."""


@dataclass
class QdqModel:
    fp32: onnx.ModelProto
    specs: dict[str, QuantSpec] = field(default_factory=dict)

    def activation_stats(self) -> dict[str, TensorStats]:
        return trained_stats(self.specs)


def has_qdq(proto: onnx.ModelProto) -> bool:
    return any(n.op_type in _QDQ or n.op_type in _OPERATOR_STYLE for n in proto.graph.node)


def split_qdq(proto: onnx.ModelProto, label: str = "model") -> QdqModel:
    """The FP32 model under ``proto``'s Q/DQ and the spec of every tensor they quantized."""
    graph = proto.graph
    operator = next((n for n in graph.node if n.op_type in _OPERATOR_STYLE), None)
    if operator is not None:
        raise UnsupportedError(f"{label}: node '{operator.name}' is {operator.op_type}: dsqc reads QDQ "
                               "models (QuantizeLinear/DequantizeLinear around float ops), not "
                               "operator-style "
                               "ones")
    meta = json.loads(next((p.value for p in proto.metadata_props if p.key == SPEC_METADATA), "{}"))
    inits = {t.name: t for t in graph.initializer}
    producers = {o: n for n in graph.node for o in n.output}
    outputs = {o.name for o in graph.output}
    rename: dict[str, str] = {}  # DQ output → the float tensor readers read now
    relus: dict[str, onnx.NodeProto] = {}  # producer output → the Relu folded into its Q, put back
    taken = {o for n in graph.node for o in n.output} | {i.name for i in graph.input} | set(inits)
    specs: dict[str, QuantSpec] = {}
    new_inits: dict[str, onnx.TensorProto] = {}
    for node in graph.node:
        if node.op_type != "DequantizeLinear":
            continue
        source = node.input[0]
        if source in inits:
            name = _float_name(source, node.output[0], inits, new_inits)
            if name not in new_inits:
                spec = _spec(node, inits, label, meta.get(name, {}), values=inits[source])
                q = _integers(inits[source])
                new_inits[name] = numpy_helper.from_array(dequantize(q, spec), name)
                specs[name] = spec
            rename[node.output[0]] = name
            continue
        q_node = producers.get(source)
        if q_node is None or q_node.op_type != "QuantizeLinear":
            raise QdqInputError(f"{label}: DequantizeLinear '{node.name}' reads '{source}', which is "
                                "neither a constant nor a QuantizeLinear output; dsqc reads Q→DQ pairs and "
                                "DQ of constants")
        x = q_node.input[0]
        spec = _spec(q_node, inits, label, meta.get(x, {}))
        target = node.output[0] if node.output[0] in outputs else x
        if _folded_relu(producers.get(x), spec) and x not in relus:  # the producer writes x_pre_relu now
            relus[x] = onnx.helper.make_node("Relu", [unique_name(f"{x}_pre_relu", taken)], [target],
                                             name=unique_name(f"{x}_Relu", taken))
        if target != x:
            rename[x] = target
        specs[target] = spec
        rename[node.output[0]] = target
    qdq_outputs = {n.output[0] for n in graph.node if n.op_type == "QuantizeLinear"}
    for node in graph.node:
        if node.op_type not in _QDQ and any(i in qdq_outputs for i in node.input):
            raise QdqInputError(f"{label}: node '{node.name}' reads a QuantizeLinear output directly; "
                                "dsqc reads Q→DQ pairs only")
    return QdqModel(_rebuild(proto, rename, new_inits, relus, label), specs)


_FOLDS_RELU = {"Conv", "ConvTranspose", "Gemm", "MatMul", "Add"}


def _folded_relu(producer: onnx.NodeProto | None, spec: QuantSpec) -> bool:
    """A Q that clamps at exactly zero after an op whose Relu dsqc/ORT fold into the Q."""
    return (producer is not None and producer.op_type in _FOLDS_RELU and spec.axis is None
            and int(spec.zero_point) == DTYPE_RANGES[spec.dtype][0])


def _float_name(source: str, dq_out: str, inits: Mapping[str, object], made: Mapping[str, object]) -> str:
    base = source.removesuffix("_quantized")
    return base if base != source and (base not in inits or base in made) else dq_out


def _integers(tensor: onnx.TensorProto) -> np.ndarray:
    return np.asarray(numpy_helper.to_array(tensor)).astype(np.int64)


def _spec(node: onnx.NodeProto, inits: Mapping[str, onnx.TensorProto], label: str, meta: dict[str, object],
          values: onnx.TensorProto | None = None) -> QuantSpec:
    """The spec of a Q or DQ node (its scale and zero point must be constants)."""
    for i in node.input[1:3]:
        if i and i not in inits:
            raise QdqInputError(f"{label}: {node.op_type} '{node.name}' has a non-constant scale or "
                                f"zero point '{i}'; dsqc reads static QDQ models only")
    scale = numpy_helper.to_array(inits[node.input[1]]).astype(np.float32)
    zero_init = inits.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    dtype_code = zero_init.data_type if zero_init is not None else (
        values.data_type if values is not None else onnx.TensorProto.UINT8)
    if dtype_code not in _DTYPES:
        raise QdqInputError(f"{label}: {node.op_type} '{node.name}' uses element type "
                            f"{onnx.TensorProto.DataType.Name(dtype_code)}; dsqc reads "
                            "int8/uint8/int4/uint4/int32")
    dtype = _DTYPES[dtype_code]
    zero = _integers(zero_init) if zero_init is not None else np.zeros(scale.shape, np.int64)
    attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    per_axis = scale.ndim >= 1 and scale.size > 1
    rank = len(values.dims) if values is not None else None
    axis = int(attrs.get("axis", 1)) if per_axis else None
    if axis is not None and axis < 0 and rank is not None:
        axis += rank
    if not per_axis:
        scale, zero = scale.reshape(()), zero.reshape(())
    block = int(attrs["block_size"]) if attrs.get("block_size") else None
    narrow = bool(meta.get("narrow", False))
    if values is not None and dtype.startswith("int") and dtype != "int32":
        narrow = narrow or bool(_integers(values).min(initial=0) > DTYPE_RANGES[dtype][0])
    limit = meta.get("limit")
    return QuantSpec(dtype, scale, zero, axis, block, narrow, int(limit) if isinstance(limit, int) else None)


def _rebuild(proto: onnx.ModelProto, rename: dict[str, str], new_inits: dict[str, onnx.TensorProto],
             relus: dict[str, onnx.NodeProto], label: str) -> onnx.ModelProto:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    graph = model.graph
    keep = []
    for node in graph.node:
        if node.op_type in _QDQ:
            continue
        node.input[:] = [rename.get(i, i) for i in node.input]
        keep.append(node)
        keep += [relus[o] for o in node.output if o in relus]
        node.output[:] = [relus[o].input[0] if o in relus else rename.get(o, o) for o in node.output]
    del graph.node[:]
    graph.node.extend(keep)
    used = {i for n in keep for i in n.input} | {o.name for o in graph.output}
    kept_inits = [t for t in graph.initializer if t.name in used and t.name not in new_inits]
    del graph.initializer[:]
    graph.initializer.extend([*kept_inits, *(t for n, t in sorted(new_inits.items()) if n in used)])
    del graph.value_info[:]  # Q/DQ tensors changed type; shape inference redoes it
    del model.metadata_props[:]
    return prepare(model, f"{label} (Q/DQ removed)")


def trained_stats(specs: Mapping[str, QuantSpec]) -> dict[str, TensorStats]:
    """The range each per-tensor activation spec represents, as calibration statistics."""
    stats = {}
    for name, spec in specs.items():
        if spec.axis is None and spec.dtype != "int32":
            lo, hi = spec.representable_range()
            stats[name] = TensorStats(name, lo, hi, lo, hi, "trained")
    return stats


def keep_specs(model: Model, placement: Placement, plan: QuantPlan, specs: Mapping[str, QuantSpec],
               profile: TargetProfile) -> QuantPlan:
    """``plan`` with the trained ``specs`` in place of planned ones, in the target's dtypes."""
    fixed = {n.outputs[0].name for n in model.graph.nodes if n.op in profile.fixed_output_specs}
    groups: dict[str, list[str]] = {}
    for name in placement.activations:
        groups.setdefault(placement.group_of(name), []).append(name)
    for members in groups.values():
        trained = [n for n in sorted(members) if n in specs]
        if not trained or any(n in fixed for n in members):
            continue
        if any(not specs[n].same_as(specs[trained[0]]) for n in trained):
            plan.notes.append(f"{', '.join(trained)} share one scale on {profile.name} but were trained with "
                              f"different ones: kept {trained[0]}'s")
        spec = _activation(trained[0], specs[trained[0]], plan.tensors[trained[0]], profile)
        for name in members:
            plan.tensors[name] = spec
    for node in model.graph.nodes:
        index = WEIGHT_INPUT.get(node.op)
        if index is None or len(node.inputs) <= index or node.inputs[index].name not in plan.tensors:
            continue
        w_name = node.inputs[index].name
        if w_name in specs:
            plan.tensors[w_name] = _weight(w_name, specs[w_name], plan.tensors[w_name])
        _rebias(node, plan)
    unused = sorted(n for n, s in specs.items() if n not in plan.tensors and s.dtype != "int32")
    if unused:
        shown = ", ".join(unused[:6])
        plan.notes.append(f"{len(unused)} trained tensors stay float on {profile.name}: {shown}")
    return plan


def _activation(name: str, trained: QuantSpec, planned: QuantSpec, profile: TargetProfile) -> QuantSpec:
    zero = trained.zero_point
    if trained.dtype != planned.dtype:
        shifts = {("uint8", "int8"): -128, ("int8", "uint8"): 128}
        if (trained.dtype, planned.dtype) not in shifts:
            raise QdqInputError(f"tensor '{name}' was trained as {trained.dtype}; {profile.name} needs "
                                f"{planned.dtype} activations")
        zero = zero + shifts[(trained.dtype, planned.dtype)]
    spec = QuantSpec(planned.dtype, trained.scale, zero, trained.axis)
    if profile.symmetric_activations and not np.array_equal(spec.zero_point, planned.zero_point):
        raise QdqInputError(f"tensor '{name}' was trained with zero point {int(trained.zero_point)}; "
                            f"{profile.name} needs symmetric activations: train with a {profile.name} plan")
    if profile.power_of_two_scales and not np.all(np.exp2(np.round(np.log2(spec.scale))) == spec.scale):
        raise QdqInputError(f"tensor '{name}' has trained scale {float(spec.scale):g}, not a power of two as "
                            f"{profile.name} with power_of_two_scales needs")
    return spec


def _weight(name: str, trained: QuantSpec, planned: QuantSpec) -> QuantSpec:
    scale = trained.scale
    if trained.axis is None and planned.axis is not None:  # per tensor is per channel with equal scales
        scale = np.full(planned.scale.shape, trained.scale, np.float32)
    elif trained.axis != planned.axis or trained.block_size != planned.block_size:
        kind = "channel" if trained.axis is not None else "tensor"
        raise QdqInputError(f"weight '{name}' was trained per {kind} "
                            f"(axis {trained.axis}, block {trained.block_size}); the target plans axis "
                            f"{planned.axis}, block {planned.block_size}")
    return dataclasses.replace(trained, scale=scale, zero_point=np.zeros(scale.shape, np.int64),
                               axis=planned.axis)


def _rebias(node: gs.Node, plan: QuantPlan) -> None:
    """The node's int32 bias spec at ``s_in · s_w`` of the specs now in ``plan``."""
    inputs = node.inputs
    b_index = BIAS_INPUT.get(node.op)
    if b_index is None or len(inputs) <= b_index or inputs[b_index].name not in plan.tensors:
        return
    x_spec, w_spec = plan.tensors.get(inputs[0].name), plan.tensors[inputs[1].name]
    bias = constant_value(inputs[b_index])
    if x_spec is None or bias is None:
        return
    scale = w_spec.scale if w_spec.axis is not None else np.full(bias.shape, w_spec.scale, np.float32)
    plan.tensors[inputs[b_index].name] = bias_spec(x_spec.scale, scale)


def check_trained(fp32: onnx.ModelProto, specs: dict[str, QuantSpec], label: str) -> dict[str, QuantSpec]:
    """The trained specs whose tensors survived normalization; a weight normalization changed (a
    BatchNorm folded into it) is an error, since its trained integers would be lost."""
    inits = {t.name: numpy_helper.to_array(t) for t in fp32.graph.initializer}
    names = inits.keys() | {o for n in fp32.graph.node for o in n.output} | {i.name for i in fp32.graph.input}
    kept = {}
    for name, spec in specs.items():
        if name not in names:
            continue
        if name in inits and spec.dtype != "int32":
            values = inits[name]
            if not np.array_equal(dequantize(quantize(values, spec), spec), values.astype(np.float32)):
                raise QdqInputError(f"{label}: normalization changed the quantized weight '{name}' (a "
                                    "BatchNorm or Add folded into its Conv/Gemm?); fold them before "
                                    "quantizing")
        kept[name] = spec
    return kept
