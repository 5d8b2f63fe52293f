"""Every plan one calibration can make: restrictions of a full INT8 plan, per node.

One calibration and two complete plans — INT8 wherever the target allows (embedding tables
weight-only on targets that take them) and INT4 weight-only wherever it takes INT4 — define each
node's choices: INT8 (weights and activations, specs from the INT8 plan), INT4 (weight-only, from
the INT4 plan), FP16 (float16 weights) or FP32. ``PlanSpace.restrict`` turns one choice per node
into a ``QuantPlan`` without recalibrating: an activation tensor keeps its Q/DQ while one of the
nodes that share it (its producer, whose fused kernel needs the output Q, and its readers, through
scale-sharing layout ops) runs INT8; a folded Relu stays folded only while its Q stays.
"""

from __future__ import annotations

import copy
import logging
import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dsqc.autoprec.plan_recipe import parse_plan_recipe, plan_recipe_text
from dsqc.calibration.data import SampleSet
from dsqc.calibration.runner import TensorStats
from dsqc.ir import Model, constant_value
from dsqc.op_kinds import MATRIX_OPS
from dsqc.quant.planner import Placement, Range, place
from dsqc.quant.profile import TargetProfile
from dsqc.quant.quantize import calibrate_missing, finalize_plan
from dsqc.quant.recipe import Override, Recipe
from dsqc.quant.spec import NodeDecision, Precision, QuantPlan, QuantSpec
from dsqc.quant.weights import is_float_constant, is_table_lookup

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class Setting:
    """What one node quantizes: its weights (``int8``/``int4``/``fp16``/None) and its activations."""

    weights: str | None = None
    acts: bool = False

    @property
    def precision(self) -> Precision:
        if self.acts or self.weights == "int8":
            return Precision.INT8
        return {"int4": Precision.INT4, "fp16": Precision.FP16}.get(self.weights or "", Precision.FP32)


def setting_for(precision: Precision, has_weights: bool) -> Setting:
    """The setting a whole-node precision means (INT16, int16 activations, as INT8: one-node variants
    measure int8 rounding)."""
    if precision in (Precision.INT8, Precision.INT16):
        return Setting("int8" if has_weights else None, True)
    if precision is Precision.INT4:
        return Setting("int4")
    return Setting("fp16") if precision is Precision.FP16 and has_weights else Setting()


@dataclass
class Choice:
    """A node whose precision the analysis measures and the search picks."""

    name: str
    op: str
    index: int
    weight: str | None
    bias: str | None
    consts: list[str]
    table: bool
    activations: frozenset[str] = frozenset()
    options: tuple[Precision, ...] = ()
    nbytes: dict[Precision, int] = field(default_factory=dict)


@dataclass
class PlanSpace:
    """The FP32 model, the two full plans, the choices and their bytes.

    INT4 specs need no opset 21 here: plans are evaluated with fake quantization (``SwitchModel``) and
    built by ``quantize_model``, which raises the opset when its recipe asks for INT4.
    """

    fp32: onnx.ModelProto
    profile: TargetProfile
    recipe: Recipe
    plan8: QuantPlan
    plan4: QuantPlan | None
    choices: dict[str, Choice]
    fixed: dict[str, Setting]  # nodes the user's recipe set: as the INT8 plan has them
    owners: dict[str, frozenset[str]]  # activation tensor → nodes whose INT8 run needs its Q/DQ
    node_consts: dict[str, list[str]]  # node → its float constant inputs
    passthrough: dict[str, str]  # layout node following its neighbours → its data input
    folded_outputs: dict[str, str]  # folded Relu/Clip → its output tensor
    fp32_bytes: int
    base_bytes: int  # bytes of everything but the choices (fixed nodes counted at FP32)
    values: dict[str, np.ndarray] = field(default_factory=dict)  # float constant → its value
    stats: dict[str, TensorStats] = field(default_factory=dict)
    calibration_seconds: float = 0.0
    model: Model | None = None  # ``fp32`` as graphsurgeon reads it, for ``planned``
    calib: SampleSet | None = None  # what ``stats`` came from: ``planned`` calibrates a tensor it lacks
    batch_size: int = 8
    fused_biases: dict[str, str] = field(default_factory=dict)  # bias Add → the MatMul it runs with

    def consts_of(self, node: str) -> dict[str, np.ndarray]:
        return {name: self.values[name] for name in self.node_consts.get(node, [])}

    def restrict(self, settings: Mapping[str, Setting],
                 reasons: Mapping[str, str] | None = None) -> QuantPlan:
        """The plan running each choice as ``settings`` says (absent: FP32) and fixed nodes as planned."""
        reasons = reasons or {}
        plan = QuantPlan(nodes=dict(self.plan8.nodes), notes=list(self.plan8.notes))
        active: set[str] = set()
        for name in self.choices:
            setting = settings.get(name, Setting())
            plan.nodes[name] = NodeDecision(setting.precision, reasons.get(
                name, f"{setting.precision.value} (restricted plan)"))
            self._weights(name, setting, plan)
            if setting.acts:
                active.add(name)
        unknown = settings.keys() - self.choices.keys()
        if unknown:
            raise KeyError(f"not nodes the plan space can set: {sorted(unknown)[:3]}")
        for name, setting in self.fixed.items():
            self._weights(name, setting, plan)
            if setting.acts:
                active.add(name)
        for tensor, owners in self.owners.items():
            if owners & active:
                plan.tensors[tensor] = self.plan8.tensors[tensor]
        for add, matmul in self.fused_biases.items():
            if plan.precision_of(matmul) is not Precision.INT8:
                plan.nodes[add] = NodeDecision(Precision.FP32, f"bias of {matmul}, which does not run int8")
        for act, producer in self.plan8.folded_activations.items():
            if plan.precision_of(producer) is Precision.INT8 and self.folded_outputs[act] in plan.tensors:
                plan.folded_activations[act] = producer
            else:
                plan.nodes[act] = NodeDecision(Precision.FP32, f"not folded: {producer} does not run int8")
        for node, data in self.passthrough.items():
            if plan.precision_of(node) is Precision.INT8 and data not in plan.tensors:
                plan.nodes[node] = NodeDecision(Precision.FP32, "layout op between float tensors")
        return plan

    def planned(self, assignment: Mapping[str, Precision]) -> QuantPlan:
        """The plan the build makes of ``assignment``: its plan recipe placed and finalized as
        ``quantize_model`` does, with this space's calibration. Unlike ``restrict`` it sees the float
        neighbours: a scale-sharing group (Concat, Split, Add on ``tflite``) takes the range of its int8
        members only, and a layout op between float nodes stays float. A plan measured by the search must
        be this one; ``restrict`` serves the per-node analysis (weights or activations alone)."""
        recipe = parse_plan_recipe(plan_recipe_text(self.recipe, assignment, {}), "the searched plan")
        if self.model is None:
            self.model = Model.from_proto(self.fp32)
        placement = place(self.model, self.profile, recipe)
        missing = [t for t in placement.activations if t not in self.stats]
        if missing:  # a float neighbour can expose a tensor the INT8 plan folds away: RegNetY's residual
            # Add output on ``tflite``, taken float, before the Relu the INT8 plan had fused into it
            if self.calib is None:
                raise KeyError(f"plan space: no calibration for {missing[:3]}")
            log.info("plan space: calibrating %d tensor(s) the INT8 plan does not quantize (%s)",
                     len(missing), missing[0])
            self.stats |= calibrate_missing(self.fp32, missing, self.recipe, self.calib, self.batch_size,
                                            self.stats)
        return finalize_plan(self.fp32, self.model, placement, _ranges(self.stats), self.profile, recipe,
                             self.calib)

    def _weights(self, name: str, setting: Setting, plan: QuantPlan) -> None:
        choice = self.choices.get(name)
        int4 = setting.weights == "int4" and self.plan4 is not None and choice is not None
        source = self.plan4 if int4 and self.plan4 is not None else self.plan8
        for tensor in self.node_consts.get(name, []):
            spec = source.tensors.get(tensor)
            is_bias = choice is not None and tensor == choice.bias
            if spec is not None and setting.weights in ("int8", "int4") and (setting.acts or not is_bias):
                plan.tensors[tensor] = spec

    def size_of(self, assignment: Mapping[str, Precision]) -> int:
        """Predicted weight bytes of a whole-node assignment (absent choices: FP32)."""
        return self.base_bytes + sum(c.nbytes[assignment.get(n, Precision.FP32)]
                                     for n, c in self.choices.items())


def build_space(fp32: onnx.ModelProto, profile: TargetProfile, recipe: Recipe, calib: SampleSet,
                batch_size: int = 8, int4: bool = True) -> PlanSpace:
    """Calibrate once and plan INT8 (and INT4) everywhere the recipe leaves the choice open."""
    model = Model.from_proto(fp32)
    nodes = {n.name: n for n in model.graph.nodes}
    user_fixed = {n.name for n in model.graph.nodes if recipe.options_for(n.name, n.op).precision is not None}
    tables = [n for n in model.graph.nodes if is_table_lookup(n) and n.name not in user_fixed
              and profile.table_lookups]
    int4_nodes = [n for n in model.graph.nodes if n.name not in user_fixed and profile.int4_weights and int4
                  and (n in tables or (n.op in MATRIX_OPS and _const(n, 1) is not None))]
    recipe8 = _with_overrides(recipe, {n.name: "int8" for n in tables})
    placement8 = place(model, profile, recipe8)
    start = time.perf_counter()
    stats = calibrate_missing(fp32, placement8.activations, recipe, calib, batch_size, {})
    seconds = time.perf_counter() - start
    plan8 = finalize_plan(fp32, model, placement8, _ranges(stats), profile, recipe8, calib)
    plan4 = None
    if int4_nodes:
        recipe4 = _with_overrides(recipe, {n.name: "int4" for n in int4_nodes})
        placement4 = place(model, profile, recipe4)
        start = time.perf_counter()
        stats |= calibrate_missing(fp32, placement4.activations, recipe, calib, batch_size, stats)
        seconds += time.perf_counter() - start
        plan4 = finalize_plan(fp32, model, placement4, _ranges(stats), profile, recipe4, calib)
    space = _make_space(fp32, model, nodes, profile, recipe, plan8, plan4, placement8, user_fixed)
    space.stats, space.calibration_seconds = stats, seconds
    space.calib, space.batch_size = calib, batch_size
    log.info("plan space: %d choices, %d fixed nodes, %d activation tensors", len(space.choices),
             len(space.fixed), len(space.owners))
    return space


def _with_overrides(recipe: Recipe, precisions: Mapping[str, str]) -> Recipe:
    """``recipe`` with exact-name precision overrides placed first (the user's own overrides still win)."""
    out = copy.copy(recipe)
    ours = [Override(re.compile(re.escape(name)), {"precision": p}) for name, p in precisions.items()]
    out.overrides = ours + [copy.copy(o) for o in recipe.overrides]
    out.exclude_nodes = [copy.copy(o) for o in recipe.exclude_nodes]
    return out


def _ranges(stats: Mapping[str, TensorStats]) -> dict[str, Range]:
    return {name: Range(s.lo, s.hi) for name, s in stats.items()}


def _const(node: gs.Node, slot: int) -> np.ndarray | None:
    return constant_value(node.inputs[slot]) if len(node.inputs) > slot and node.inputs[slot].name else None


def _make_space(fp32: onnx.ModelProto, model: Model, nodes: dict[str, gs.Node], profile: TargetProfile,
                recipe: Recipe, plan8: QuantPlan, plan4: QuantPlan | None, placement: Placement,
                user_fixed: set[str]) -> PlanSpace:
    passthrough = {n: node.inputs[0].name for n, node in nodes.items()
                   if node.op in profile.passthrough_ops and not is_table_lookup(node) and node.inputs}
    followers = set(plan8.folded_activations) | set(passthrough) | set(placement.fused_biases)
    choices: dict[str, Choice] = {}
    fixed: dict[str, Setting] = {}
    node_consts: dict[str, list[str]] = {}
    values: dict[str, np.ndarray] = {}
    for index, node in enumerate(model.graph.nodes):
        node_consts[node.name] = [t.name for t in node.inputs if t.name and is_float_constant(t)]
        values.update({t.name: v for t in node.inputs if t.name in node_consts[node.name]
                       and (v := constant_value(t)) is not None})
        precision = plan8.precision_of(node.name)
        if precision not in (Precision.INT8, Precision.INT4) or node.name in followers:
            continue
        if node.name in user_fixed:
            fixed[node.name] = setting_for(precision, bool(node_consts[node.name]))
        else:
            choices[node.name] = _choice(node, index, profile, plan8, plan4)
    deciders = set(choices) | {n for n, s in fixed.items() if s.acts}
    owners = _owners(model, placement, plan8, deciders, profile.output_q_optional)
    for name, choice in choices.items():
        choice.activations = frozenset(t for t, o in owners.items() if name in o)
    total = weight_bytes(fp32)
    base = total - sum(c.nbytes[Precision.FP32] for c in choices.values())
    folded_outputs = {a: nodes[a].outputs[0].name for a in plan8.folded_activations}
    return PlanSpace(fp32, profile, recipe, plan8, plan4, choices, fixed, owners, node_consts,
                     {n: t for n, t in passthrough.items() if n not in plan8.folded_activations},
                     folded_outputs, total, base, values, fused_biases=dict(placement.fused_biases))


def _choice(node: gs.Node, index: int, profile: TargetProfile, plan8: QuantPlan,
            plan4: QuantPlan | None) -> Choice:
    table = is_table_lookup(node)
    weight_slot = 0 if table else 1
    weight = node.inputs[weight_slot].name if _const(node, weight_slot) is not None else None
    bias = node.inputs[2].name if not table and _const(node, 2) is not None else None
    consts = [t.name for t in node.inputs if t.name and is_float_constant(t)]
    options = [Precision.INT8] if profile.integer_only else [Precision.INT8, Precision.FP32]
    if profile.int16_activations and not table:
        options.append(Precision.INT16)
    if weight and plan4 is not None and plan4.precision_of(node.name) is Precision.INT4:
        options.append(Precision.INT4)
    if consts and profile.fp16_weights and not profile.integer_only:
        options.append(Precision.FP16)
    choice = Choice(node.name, node.op, index, weight, bias, consts, table)
    values = {t.name: constant_value(t) for t in node.inputs if t.name in consts}
    for p in {*options, Precision.FP32}:  # FP32 bytes also count what a choice weighs unquantized
        choice.nbytes[p] = _node_bytes(p, values, weight, bias, plan8, plan4)
    choice.options = tuple(sorted(options, key=lambda p: (choice.nbytes[p], _RANK[p])))
    return choice


_RANK = {Precision.INT4: 0, Precision.INT8: 1, Precision.INT16: 2, Precision.FP16: 3, Precision.FP32: 4}


def _node_bytes(precision: Precision, values: Mapping[str, np.ndarray | None], weight: str | None,
                bias: str | None, plan8: QuantPlan, plan4: QuantPlan | None) -> int:
    total = 0
    for name, value in values.items():
        assert value is not None
        if precision is Precision.FP16:
            total += value.size * 2
        elif precision in (Precision.INT8, Precision.INT16) and name in (weight, bias) \
                and name in plan8.tensors:
            total += spec_bytes(value.size, plan8.tensors[name])
        elif precision is Precision.INT4 and name == weight and plan4 is not None and name in plan4.tensors:
            total += spec_bytes(value.size, plan4.tensors[name])
        else:
            total += value.nbytes
    return total


def spec_bytes(size: int, spec: QuantSpec) -> int:
    """Stored bytes of a quantized constant with its scales and zero points (4-bit values packed)."""
    bits = spec.bits
    return (size * bits + 7) // 8 + spec.scale.size * 4 + (spec.zero_point.size * bits + 7) // 8


def weight_bytes(proto: onnx.ModelProto) -> int:
    """Stored bytes of every initializer (INT4/UINT4 packed two to a byte)."""
    total = 0
    for init in proto.graph.initializer:
        size = int(np.prod(init.dims)) if init.dims else 1
        if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
            total += (size + 1) // 2
        else:
            total += size * onnx.helper.tensor_dtype_to_np_dtype(init.data_type).itemsize
    return total


def _owners(model: Model, placement: Placement, plan8: QuantPlan, deciders: set[str],
            optional: frozenset[str]) -> dict[str, frozenset[str]]:
    """Activation tensor → the nodes whose INT8 execution needs its Q/DQ (shared across scale groups).

    Readers need their inputs quantized; a producer needs its output Q unless its op fuses without one
    (``output_q_optional``: MatMul/Gemm on ONNX Runtime).
    """
    tensors = model.graph.tensors()
    nodes = {n.name: n for n in model.graph.nodes}
    groups: dict[str, set[str]] = {}
    members: dict[str, list[str]] = {}
    acts = [t for t in plan8.tensors if t in placement.activations]
    for name in acts:
        members.setdefault(placement.group_of(name), []).append(name)
        tensor = tensors[name]
        owners = groups.setdefault(placement.group_of(name), set())
        for producer in tensor.inputs:
            owner = plan8.folded_activations.get(producer.name, producer.name)
            owner = placement.fused_biases.get(owner, owner)  # a bias Add's Q is its MatMul's output Q
            if owner in deciders and nodes[owner].op not in optional:  # its fused kernel needs the Q
                owners.add(owner)
        owners.update(r.name for r in tensor.outputs if r.name in deciders)
    result: dict[str, frozenset[str]] = {}
    for root, names in members.items():
        if not groups[root]:
            log.debug("tensors %s have no int8 owner; restricted plans leave them float", names)
        for name in names:
            result[name] = frozenset(groups[root])
    return result
