"""The quantization points of a finished build, and the ``SwitchModel`` that replays them one at a time.

A point is one tensor of the build's plan: an activation (one QuantizeLinear, a DequantizeLinear per
reader) or a constant (a weight or an int32 bias, a DequantizeLinear per quantized reader). The replay
reuses the sensitivity analysis' switchable model: built once from the FP32 model the plan refers to,
with a ``Where(on, DQ(Q(x)), x)`` per (tensor, reader) and every quantized constant a graph input, so
any subset of points runs without a new session. ``replay_artifact`` makes the switches and the stored
constants follow the built QDQ model itself (its readers, its stored integers) rather than the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
from onnx import numpy_helper

from dsqc.autoprec.plan_space import PlanSpace, Setting, setting_for
from dsqc.autoprec.switch_model import SwitchModel
from dsqc.driver.build_folder import BuildFolderError
from dsqc.metrics import sqnr_db
from dsqc.quant.profile import TargetProfile
from dsqc.quant.qparams import dequantize, quantize
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import Precision, QuantPlan, QuantSpec

log = logging.getLogger(__name__)
INTEGER = (Precision.INT8, Precision.INT4)
_MIN_WEIGHT_SQNR = 10.0  # a stored weight this far from MODEL's float weight comes from another model


@dataclass
class QuantPoint:
    """One quantized tensor, named by the ONNX nodes around it (in the FP32 model the plan refers to)."""

    tensor: str
    kind: str  # "activation", "weight" or "bias"
    spec: QuantSpec
    position: int  # graph order: producer's index (activations; -1 for a graph input), first reader's
    producer: str | None = None
    producer_op: str | None = None
    folded: str | None = None  # a Relu/Clip the output Q clamps instead (the producer is its input's)
    consumers: list[tuple[str, str]] = field(default_factory=list)  # (node, op)
    parts: tuple[QuantPoint, ...] = ()  # a joint point (kind JOINT): its weight and its bias
    part_of: str | None = None  # a weight or bias that is a part of the joint point of that name

    @property
    def node_label(self) -> str:
        """Producer for activations, the first quantized reader for constants: ``name (Op)``."""
        if self.kind == "activation":
            if self.producer is None:
                return "(graph input)"
            return f"{self.producer} ({self.producer_op}{' + ' + self.folded if self.folded else ''})"
        name, op = self.consumers[0]
        more = f" +{len(self.consumers) - 1}" if len(self.consumers) > 1 else ""
        return f"{name} ({op}){more}"

    def only(self, plan: QuantPlan) -> QuantPlan:
        """``plan`` with this point alone quantized (every other tensor float, FP16 nodes FP32); a joint
        point quantizes its parts together."""
        nodes = {n: d for n, d in plan.nodes.items() if d.precision in INTEGER}
        tensors = {p.tensor: p.spec for p in self.parts} if self.parts else {self.tensor: self.spec}
        return QuantPlan(tensors, nodes, dict(plan.folded_activations))


JOINT = "weight+bias"
_KIND_ORDER = {"activation": 0, JOINT: 1, "weight": 2, "bias": 3}


def joint_points(points: list[QuantPoint]) -> list[QuantPoint]:
    """Per layer, its weight and its int32 bias quantized together: what the build ships, where bias
    correction has fitted the bias to the weight's rounding (the bias alone then shows an error that
    cancels the weight's). The weight and the bias are marked ``part_of`` the joint point, which is
    named ``weight + bias`` and sorted with ``points`` in graph order."""
    weights = {tuple(p.consumers): p for p in points if p.kind == "weight"}
    joints: list[QuantPoint] = []
    for bias in (p for p in points if p.kind == "bias"):
        weight = weights.get(tuple(bias.consumers))
        if weight is None:
            continue
        joint = QuantPoint(f"{weight.tensor} + {bias.tensor}", JOINT, weight.spec, weight.position,
                           consumers=list(weight.consumers), parts=(weight, bias))
        weight.part_of = bias.part_of = joint.tensor
        joints.append(joint)
    return sorted([*points, *joints], key=lambda p: (p.position, _KIND_ORDER[p.kind], p.tensor))


def points_of(source: onnx.ModelProto, plan: QuantPlan) -> list[QuantPoint]:
    """Every tensor of ``plan`` in graph order; a tensor ``source`` lacks means another model."""
    graph = source.graph
    order = {node.name: i for i, node in enumerate(graph.node)}
    ops = {node.name: node.op_type for node in graph.node}
    producers = {out: node.name for node in graph.node for out in node.output}
    readers: dict[str, list[str]] = {}
    for node in graph.node:
        for name in dict.fromkeys(node.input):
            readers.setdefault(name, []).append(node.name)
    constants = {t.name for t in graph.initializer}
    inputs = {i.name for i in graph.input} - constants
    fold_of = {producer: act for act, producer in plan.folded_activations.items()}
    points: list[QuantPoint] = []
    for name, spec in plan.tensors.items():
        if name in constants:
            quantized = [r for r in readers.get(name, []) if plan.precision_of(r) in INTEGER]
            if not quantized:
                log.debug("%s: no integer reader, the build left it float", name)
                continue
            kind = "bias" if spec.dtype == "int32" else "weight"
            points.append(QuantPoint(name, kind, spec, min(order[r] for r in quantized),
                                     consumers=[(r, ops[r]) for r in quantized]))
        elif name in producers or name in inputs:
            producer = producers.get(name)
            point = QuantPoint(name, "activation", spec, order[producer] if producer else -1,
                               consumers=[(r, ops[r]) for r in readers.get(name, [])])
            if producer in plan.folded_activations:  # Gemm → Relu(folded) → t: named for the Gemm
                point.folded, producer = producer, plan.folded_activations[producer]
            elif producer in fold_of:
                point.folded = fold_of[producer]
            point.producer, point.producer_op = producer, ops.get(producer or "")
            points.append(point)
        else:
            raise BuildFolderError(f"the build's plan quantizes tensor '{name}', which the FP32 model does "
                                   "not "
                                   "have: MODEL is not the model this folder was built from")
    return sorted(points, key=lambda p: (p.position, p.kind != "activation", p.tensor))


def replay_space(source: onnx.ModelProto, profile: TargetProfile, plan: QuantPlan) -> PlanSpace:
    """A plan space with no choices: every node keeps the build's decision (``fixed``), so the switch
    model feeds exactly the constants the plan quantizes (or rounds to FP16) and switches its tensors."""
    floats = {t.name for t in source.graph.initializer if t.data_type in _FLOAT_TYPES}
    node_consts: dict[str, list[str]] = {}
    fixed: dict[str, Setting] = {}
    for node in source.graph.node:
        precision = plan.precision_of(node.name)
        consts = list(dict.fromkeys(i for i in node.input if i in floats))
        if precision in INTEGER:
            consts = [c for c in consts if c in plan.tensors]
        elif precision is not Precision.FP16:
            consts = []
        node_consts[node.name] = consts
        if consts:
            fixed[node.name] = setting_for(precision, True)
    owners: dict[str, frozenset[str]] = {t: frozenset() for t in plan.tensors if t not in floats}
    return PlanSpace(source, profile, Recipe(), plan, None, {}, fixed, owners, node_consts, {}, {}, 0, 0)


_FLOAT_TYPES = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE)


def replay_artifact(switch: SwitchModel, artifact: onnx.ModelProto, plan: QuantPlan,
                    points: list[QuantPoint]) -> list[str]:
    """Make ``switch`` follow ``artifact``: which readers read a DQ, what each quantized constant holds.

    Raises when the artifact does not belong to the FP32 model (a node missing, a stored weight far from
    the float one); returns notes on constants replayed from the plan instead of the artifact.
    """
    graph = artifact.graph
    nodes = {node.name: node for node in graph.node}
    producers = {out: node for node in graph.node for out in node.output}
    inits = {t.name: t for t in graph.initializer}
    source_nodes = {node.name: node for node in switch.space.fp32.graph.node}
    missing = [n for n, d in plan.nodes.items() if d.precision in INTEGER and n not in nodes
               and n not in plan.folded_activations]
    if missing:
        raise BuildFolderError(f"node '{missing[0]}' of the build's plan is not in the QDQ model"
                               ": the folder's QDQ model does not match its report.json")

    def slots(reader: str, tensor: str) -> list[str]:
        node = nodes.get(reader)
        if node is None:
            return []
        return [node.input[k] for k, name in enumerate(source_nodes[reader].input)
                if name == tensor and k < len(node.input)]

    def via_qdq(name: str) -> bool:
        dq = producers.get(name)
        q = producers.get(dq.input[0]) if dq is not None and dq.op_type == "DequantizeLinear" else None
        return q is not None and q.op_type == "QuantizeLinear"

    dq_readers = set()
    for sw in switch.switches:
        names = [sw.tensor] if sw.reader is None else slots(sw.reader, sw.tensor)
        if any(via_qdq(n) for n in names):
            dq_readers.add((sw.tensor, sw.reader))
    specs = {p.tensor: p.spec for p in points if p.kind != "activation"}
    stored: dict[str, np.ndarray] = {}
    notes: list[str] = []
    adjusted: list[str] = []
    for const in switch.consts:
        spec = specs.get(const.tensor)
        if spec is None or plan.precision_of(const.node) not in INTEGER:
            continue
        value = _stored(slots(const.node, const.tensor), producers, inits, spec)
        if value is None:
            notes.append(f"{const.tensor} at {const.node}: not a stored constant in the QDQ model; replayed "
                         "from the plan (round to nearest)")
            continue
        if value.shape != const.value.shape:
            raise BuildFolderError(f"weight '{const.tensor}' of node '{const.node}' has shape "
                                   f"{const.value.shape} "
                                   f"in MODEL but {value.shape} in the build: MODEL is not the model it was "
                                   "built from")
        if spec.dtype != "int32" and (sqnr := sqnr_db(const.value, value)) < _MIN_WEIGHT_SQNR:
            raise BuildFolderError(f"weight '{const.tensor}' of node '{const.node}' in the build is "
                                   f"{sqnr:.1f} "
                                   "dB from MODEL's: MODEL is not the model this folder was built from")
        stored[const.feed] = value
        if not np.array_equal(value, dequantize(quantize(const.value, spec), spec)):
            adjusted.append(const.tensor)
    switch.replay(dq_readers, stored)
    if adjusted:
        notes.append(f"{len(adjusted)} constant(s) stored other than MODEL's rounded to nearest ("
                     f"{', '.join(sorted(set(adjusted))[:3])}): bias correction, the shift's bias refold or "
                     "learned rounding; replayed as stored, so such a bias alone shows the error it corrects "
                     "(its layer's weight + bias row is what the build ships)")
    return notes


def _stored(names: list[str], producers: Mapping[str, onnx.NodeProto],
            inits: Mapping[str, onnx.TensorProto], spec: QuantSpec) -> np.ndarray | None:
    """The float value a reader sees: ``DQ(stored integers)`` or a folded float initializer."""
    for name in names:
        found = _stored_integers(name, producers, inits)
        if found is not None:
            if not _same_scale(found[1], spec):
                raise BuildFolderError(f"the QDQ model's scale of '{producers[name].input[0]}' differs from "
                                       "report.json's plan: the folder's files do not belong together; "
                                       "rebuild it")
            return dequantize(found[0], spec)
        if name in inits and inits[name].data_type in _FLOAT_TYPES:
            return numpy_helper.to_array(inits[name]).astype(np.float32)
    return None


def _stored_integers(name: str, producers: Mapping[str, onnx.NodeProto], inits: Mapping[str, onnx.TensorProto]
                     ) -> tuple[np.ndarray, np.ndarray | None] | None:
    """The integers and scale behind ``name`` when a DequantizeLinear of a stored constant makes it."""
    dq = producers.get(name)
    if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
        return None
    scale = numpy_helper.to_array(inits[dq.input[1]]) if dq.input[1] in inits else None
    return numpy_helper.to_array(inits[dq.input[0]]).astype(np.int64), scale


def _same_scale(scale: np.ndarray | None, spec: QuantSpec) -> bool:
    return scale is not None and scale.size == spec.scale.size and \
        bool(np.allclose(scale.ravel(), spec.scale.ravel()))
