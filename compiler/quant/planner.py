"""The planner: decides, never edits. Placement first (which nodes and tensors), then specs from stats
(activations here, a node's weights/tables/biases in ``weights.py``).

Policy lives here and in the target profile; observers only measure, and ``InsertQDQ`` only
applies the plan.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.errors import RecipeError
from dsqc.ir import Model, constant_value, is_graph_output, shape_determined
from dsqc.op_kinds import BIAS_INPUT, ELEMENTWISE_OPS, MATRIX_OPS, WEIGHT_INPUT, is_matmul_bias
from dsqc.quant.profile import TargetProfile
from dsqc.quant.qparams import activation_spec
from dsqc.quant.recipe import NodeOptions, Recipe
from dsqc.quant.spec import NodeDecision, Precision, QuantPlan, QuantSpec
from dsqc.quant.weights import FLOAT_TYPES, const_weight, is_float_constant, is_table_lookup, plan_constants

log = logging.getLogger(__name__)

_FOLDABLE = {"Relu", "Clip"}


@dataclass(frozen=True)
class Range:
    lo: float
    hi: float


@dataclass
class Placement:
    """Structure of the plan before calibration: what runs in which precision, what gets Q/DQ."""

    decisions: dict[str, NodeDecision] = field(default_factory=dict)
    options: dict[str, NodeOptions] = field(default_factory=dict)
    activations: list[str] = field(default_factory=list)
    groups: dict[str, str] = field(default_factory=dict)
    clamps: dict[str, tuple[float, float]] = field(default_factory=dict)
    folded: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    op_types: dict[str, str] = field(default_factory=dict)
    squeeze_pools: set[str] = field(default_factory=set)
    fused_biases: dict[str, str] = field(default_factory=dict)  # bias Add → the MatMul it fuses into

    def group_of(self, tensor: str) -> str:
        while self.groups.get(tensor, tensor) != tensor:
            tensor = self.groups[tensor]
        return tensor

    def tie(self, a: str, b: str) -> None:
        ra, rb = self.group_of(a), self.group_of(b)
        if ra != rb:
            self.groups[rb] = ra


def place(model: Model, profile: TargetProfile, recipe: Recipe,
          precision: str = "int8") -> Placement:
    """Choose node precisions and the activation tensors that need a Q/DQ pair."""
    placement = Placement()
    graph = model.graph
    quantized: set[str] = set()
    for node in graph.nodes:
        opts = recipe.options_for(node.name, node.op)
        placement.options[node.name] = opts
        placement.op_types[node.name] = node.op
        placement.decisions[node.name] = _decide_width(node, opts, profile, precision)
    _split_fixed_concats(graph, profile, placement)
    _float_additive_masks(graph, placement)
    _float_channel_gates(graph, profile, placement)
    _activations_follow_float_producers(graph, profile, placement)
    _fuse_matmul_biases(graph, profile, placement)
    _settle_support_ops(graph, profile, placement)
    _tabulated_chains(graph, profile, placement)
    _wide_residual_stream(graph, profile, placement)
    fused_matmuls = set(placement.fused_biases.values())
    for node in graph.nodes:
        if placement.decisions[node.name].precision is not Precision.INT8 or node.name in placement.folded \
                or is_table_lookup(node):
            continue
        for tensor in _activation_inputs(node):
            inside = node.name in placement.fused_biases and bool(tensor.inputs) and \
                tensor.inputs[0].name == placement.fused_biases[node.name]
            if not inside and not _fuses_into_add(node, tensor, profile, placement):
                quantized.add(tensor.name)
        out = node.outputs[0]
        if node.name not in fused_matmuls and _wants_output_q(graph, node, profile, placement):
            folded = _fold_activation(graph, node, profile, placement)
            quantized.add(folded.name if folded is not None else out.name)
    if profile.integer_only:  # the program's outputs are integer: one a float island writes gets its Q
        quantized |= {t.name for t in graph.outputs if _is_float(t) and t.inputs}
    _propagate_passthrough(graph, profile, placement, quantized)
    placement.activations = sorted(quantized)
    return placement


def _split_fixed_concats(graph: gs.Graph, profile: TargetProfile, placement: Placement) -> None:
    """A shared-scale Concat joining a fixed-output op (Sigmoid: 1/256) with other branches runs in
    float: one int8 scale would collapse either the [0, 1) scores or the other branch (YOLO's
    boxes-in-pixels + class scores output)."""
    for node in graph.nodes:
        if node.op not in profile.shared_scale_ops or placement.options[node.name].precision is not None or \
                placement.decisions[node.name].precision is not Precision.INT8:
            continue
        fixed = [op for op in (_source_op(t, profile) for t in _activation_inputs(node))
                 if op in profile.fixed_output_specs]
        if fixed and len(fixed) < len(_activation_inputs(node)):
            placement.decisions[node.name] = NodeDecision(
                Precision.FP32, f"{node.op} joins {fixed[0]}'s fixed-scale output with other branches; one "
                                "shared int8 scale would collapse one of them")


def _source_op(tensor: gs.Tensor, profile: TargetProfile) -> str:
    """The op that computed ``tensor``'s values, looking back through ops that only move them."""
    for _ in range(16):
        if not tensor.inputs:
            return ""
        producer = tensor.inputs[0]
        if producer.op not in profile.passthrough_ops or not producer.inputs:
            return str(producer.op)
        tensor = producer.inputs[0]
    return ""


def _float_additive_masks(graph: gs.Graph, placement: Placement) -> None:
    """Attention scores plus a Where-built mask (0 / float min) stay float up to the Softmax: an int8
    scale holding -3.4e38 rounds every real score to zero (uniform attention)."""
    for node in graph.nodes:
        masked = node.op in ("Add", "Sub") and any(t.inputs and t.inputs[0].op == "Where"
                                                   for t in _activation_inputs(node))
        if not masked or placement.options[node.name].precision is not None:
            continue
        placement.decisions[node.name] = NodeDecision(
            Precision.FP32, f"{node.op} adds a Where-built attention mask (float min): no int8 scale holds "
                            "it")
        for reader in node.outputs[0].outputs:
            if reader.op == "Softmax" and placement.options[reader.name].precision is None:
                placement.decisions[reader.name] = NodeDecision(
                    Precision.FP32, "Softmax of masked scores (float min): no int8 scale holds its input")


_GLOBAL_POOLS = ("GlobalAveragePool", "GlobalMaxPool", "ReduceMean", "ReduceMax")


def _float_channel_gates(graph: gs.Graph, profile: TargetProfile, placement: Placement) -> None:
    """Squeeze-excitation: the per-image channel vector between a global pool and the Mul that scales
    the feature map by it (pool → Conv → SiLU → Conv → Sigmoid → Mul) stays float. It holds one value
    per channel per image, so a calibration set of a few photos samples its range a few times only: on
    unseen photos the excitation Conv outputs left their calibrated range by 2-3× (EfficientNet-B0,
    tools/bench/REAL.md) and one clipped gate value rescales a whole channel. Its ops cost next to
    nothing (1×1 spatial), but its Convs hold ~10 % of EfficientNet-B0's weights: where the target
    stores FP16 weights they are FP16 (half the bytes, float32 arithmetic). The gated Mul stays int8.
    The squeeze pool stays int8 too, its output sharing the feature map's scale: a mean or max never
    leaves the map's range, so it cannot clip on unseen images, and the full-size map is not
    dequantized for a float pool (EfficientNet-B0 in ORT: 17.0 → 15.1 ms, ORT's own int8 15.1)."""
    if profile.integer_only:
        return
    for pool in graph.nodes:
        if pool.op not in _GLOBAL_POOLS or not _is_vector(pool.outputs[0]):
            continue
        floated = False
        for node in _gate_chain(pool.outputs[0]):
            if placement.options[node.name].precision is None and \
                    placement.decisions[node.name].precision is Precision.INT8:
                fp16 = profile.fp16_weights and any(is_float_constant(t) for t in node.inputs)
                why = (f"squeeze-excitation gate after {pool.name}: one value per channel per image, a "
                       "range calibration samples poorly; float costs nothing")
                placement.decisions[node.name] = NodeDecision(
                    Precision.FP16 if fp16 else Precision.FP32,
                    why + (" (weights stored FP16)" if fp16 else ""))
                floated = True
        if floated and placement.options[pool.name].precision is None and \
                placement.decisions[pool.name].precision is Precision.INT8:
            placement.squeeze_pools.add(pool.name)
            placement.tie(pool.inputs[0].name, pool.outputs[0].name)
            placement.decisions[pool.name] = NodeDecision(
                Precision.INT8, "squeeze pool of a float excitation gate: reads the int8 map; its output "
                                "shares the map's scale (a mean never leaves the map's range)")


def _gate_chain(pooled: gs.Tensor) -> list[gs.Node]:
    """The nodes that compute a channel gate from ``pooled`` (every intermediate tensor 1×1 spatial),
    if the gate ends in a Mul with a full-size feature map; else []."""
    chain: dict[str, gs.Node] = {}  # by name, in the order found (a SiLU's Mul is reached twice)
    frontier, seen, gated = [pooled], {pooled.name}, False
    while frontier:
        tensor = frontier.pop()
        for reader in tensor.outputs:
            out = reader.outputs[0] if reader.outputs else None
            if reader.op == "Mul" and out is not None and not _is_vector(out):
                gated = gated or tensor is not pooled
                continue
            if out is None or not _is_vector(out) or reader.op in ("Flatten", "Reshape", "Squeeze", "Gemm"):
                return []  # the pooled vector also feeds a classifier head or leaves the 1×1 shape
            chain.setdefault(reader.name, reader)
            if out.name not in seen:
                seen.add(out.name)
                frontier.append(out)
    return list(chain.values()) if gated else []


def _is_vector(tensor: gs.Tensor) -> bool:
    """A 4-D (N, C, 1, 1) tensor: one value per channel per sample."""
    shape = tensor.shape
    return shape is not None and len(shape) == 4 and all(d == 1 for d in shape[2:])


def _activations_follow_float_producers(graph: gs.Graph, profile: TargetProfile,
                                        placement: Placement) -> None:
    """A Relu / Clip(0, hi) that int8 folds into its producer's output Q follows a float producer into
    float. Left an int8 kernel of its own (``tflite``, where Relu is a compute op) it would quantize the
    producer's pre-activation output — negatives included, a coarser step — where int8 quantizes after
    the clamp: ShuffleNetV2's stem Conv in fp32 cost 0.6 dB on ``tflite`` that way, not gained it."""
    for node in graph.nodes:
        decision = placement.decisions[node.name]
        if decision.precision is Precision.INT8 or decision.integer_only or len(node.outputs) != 1 \
                or node.op not in profile.compute_ops:
            continue
        folds = _foldable_activation(graph, node, profile)
        act = folds[0] if folds is not None else None
        if act is None or placement.options[act.name].precision is not None:
            continue
        if placement.decisions[act.name].precision is Precision.INT8:
            why = f"{act.op} follows {node.name} into float (int8 would fold it into its output Q)"
            placement.decisions[act.name] = NodeDecision(Precision.FP32, why)


def _fuse_matmul_biases(graph: gs.Graph, profile: TargetProfile, placement: Placement) -> None:
    """Where the target runs ``MatMul(x, W) → Add(·, b)`` as one kernel (TFLite FULLY_CONNECTED with its
    bias), the bias Add runs int8 with its MatMul and the output Q goes after the Add. A Q between them
    describes a kernel the target does not have: its lowering fuses the pair and, finding no Q on the
    sum, ran the FC in float (MiniLM: 18 of 36 FCs; the QDQ model measured 6 dB, the file 16.5)."""
    if not profile.fused_matmul_bias:
        return
    for matmul in graph.nodes:
        if matmul.op != "MatMul" or placement.decisions[matmul.name].precision is not Precision.INT8:
            continue
        add = _bias_add(graph, matmul)
        if add is None or placement.options[add.name].precision is not None:
            continue
        placement.fused_biases[add.name] = matmul.name
        placement.decisions[add.name] = NodeDecision(
            Precision.INT8, f"bias of {matmul.name}: {profile.name} runs MatMul and bias as one kernel")


def _bias_add(graph: gs.Graph, matmul: gs.Node) -> gs.Node | None:
    """The Add that adds a constant [N] bias to ``MatMul(x, W[K, N])``'s output, its only reader."""
    weight = constant_value(matmul.inputs[1]) if len(matmul.inputs) == 2 else None
    out = matmul.outputs[0]
    if weight is None or len(out.outputs) != 1 or is_graph_output(graph, out):
        return None
    add = out.outputs[0]
    consts = [constant_value(t) for t in add.inputs if t is not out]
    if add.op != "Add" or len(add.inputs) != 2 or len(consts) != 1 or consts[0] is None:
        return None
    return add if is_matmul_bias(weight.shape, np.shape(consts[0])) else None


def _tabulated_chains(graph: gs.Graph, profile: TargetProfile, placement: Placement) -> None:
    """Integer-only targets: a chain of elementwise ops on one tensor with scalar constants that holds an
    op without an integer kernel (GELU as torch exports it: Div → Erf → Add → Mul(x, ·) → Mul 0.5) is
    one 256-entry table of the integer program: every node of it stays float between the tensor's DQ
    and the chain's one Q — one rounding, where int8 pieces (Add, Mul, the Mul by 0.5) round three times."""
    if not profile.integer_only:
        return
    done: set[str] = set()
    for seed in graph.nodes:
        if seed.op not in ELEMENTWISE_OPS or seed.op in profile.compute_ops or seed.name in done:
            continue
        chain = _elementwise_chain(graph, seed)
        done |= {n.name for n in chain}
        if len(chain) < 2 or any(placement.options[n.name].precision is not None for n in chain):
            continue
        for node in chain:
            placement.decisions[node.name] = NodeDecision(
                Precision.FP32, f"in the 256-entry table of {' → '.join(n.op for n in chain)} on "
                                f"{profile.name} (one rounding for the whole function)")


def _wide_residual_stream(graph: gs.Graph, profile: TargetProfile, placement: Placement) -> None:
    """``profile.wide_residuals``: an int8 Add of two activations whose sum a LayerNorm reads (the
    residual stream of a pre- or post-LN transformer) runs with int16 activations; the recipe wins."""
    if not profile.wide_residuals or not profile.int16_activations or profile.activation_dtype == "int16":
        return
    for node in graph.nodes:
        decision = placement.decisions[node.name]
        if node.op != "Add" or placement.options[node.name].precision is not None or decision.wide or \
                decision.precision is not Precision.INT8 or len(_activation_inputs(node)) != 2 or \
                not _read_by(node.outputs[0], "LayerNormalization", profile):
            continue
        placement.decisions[node.name] = NodeDecision(
            Precision.INT8, f"residual stream into a LayerNorm: int16 activations on {profile.name} (one "
                            "int8 scale for the stream every layer adds to loses too much)", wide=True)


def _read_by(tensor: gs.Tensor, op: str, profile: TargetProfile, depth: int = 0) -> bool:
    """Whether an ``op`` node reads ``tensor``, looking forward through ops that only move values."""
    for reader in tensor.outputs:
        if reader.op == op:
            return True
        if reader.op in profile.passthrough_ops and reader.outputs and depth < 8 and \
                _read_by(reader.outputs[0], op, profile, depth + 1):
            return True
    return False


def _elementwise_chain(graph: gs.Graph, seed: gs.Node) -> list[gs.Node]:
    """The elementwise nodes computing a function of one tensor that ``seed`` belongs to (back to the
    tensor, forward while every input is that tensor, the chain's outputs or a scalar), if they end in
    one output; else []."""
    source = _chain_source(seed)
    if source is None:
        return []
    chain: list[gs.Node] = []
    inside = {source.name}
    for node in graph.nodes:  # topological order
        inputs = [t for t in node.inputs if t.name]
        if node.op not in ELEMENTWISE_OPS or not any(t.name in inside for t in inputs):
            continue
        if all(t.name in inside or _scalar(t) for t in inputs) and len(node.outputs) == 1:
            chain.append(node)
            inside.add(node.outputs[0].name)
    made = [n.outputs[0] for n in chain]
    exits = [t for t in made if is_graph_output(graph, t) or any(r not in chain for r in t.outputs)]
    return chain if seed in chain and len(exits) == 1 else []


def _chain_source(node: gs.Node) -> gs.Tensor | None:
    """The tensor an elementwise chain through ``node`` starts from: back through elementwise nodes of
    one non-scalar input."""
    for _ in range(16):
        data = [t for t in node.inputs if t.name and not _scalar(t)]
        if len(data) != 1 or not _is_float(data[0]):
            return None
        producer = data[0].inputs[0] if data[0].inputs else None
        if producer is None or producer.op not in ELEMENTWISE_OPS or \
                len([t for t in producer.inputs if t.name and not _scalar(t)]) != 1:
            return data[0]
        node = producer
    return None


def _scalar(tensor: gs.Tensor) -> bool:
    value = constant_value(tensor)
    return value is not None and np.size(value) == 1


def _settle_support_ops(graph: gs.Graph, profile: TargetProfile, placement: Placement) -> None:
    """Support ops stay int8 only between int8 nodes: some int8 node reads their output and some input
    is quantized anyway (through layout ops) — so SiLU/GELU pieces after a MatMul stay float."""
    support = [n for n in graph.nodes if n.op in profile.support_ops
               and placement.decisions[n.name].precision is Precision.INT8
               and placement.options[n.name].precision is None and n.name not in placement.squeeze_pools
               and n.name not in placement.fused_biases]
    changed = True
    while changed:
        changed = False
        for node in support:
            if placement.decisions[node.name].precision is not Precision.INT8:
                continue
            reason = None
            if not _feeds_int8(node.outputs[0], profile, placement):
                reason = f"{node.op} output feeds no int8 node: its Q/DQ would cost more than it gains"
            elif not any(_quantized_anyway(t, profile, placement) for t in _activation_inputs(node)):
                reason = f"{node.op} reads no tensor that is quantized anyway: its Q/DQ would cost more"
            if reason:
                placement.decisions[node.name] = NodeDecision(Precision.FP32, reason)
                changed = True


def _quantized_anyway(tensor: gs.Tensor, profile: TargetProfile, placement: Placement,
                      depth: int = 0) -> bool:
    """Whether ``tensor`` is the output of an int8 node that always gets an output Q (a compute op
    whose output Q is not optional, or an int8 support op), looking back through layout ops."""
    src = tensor.inputs[0] if tensor.inputs else None
    if src is None or depth > 8:
        return False
    if src.op in profile.passthrough_ops or src.op in _FOLDABLE:
        return bool(src.inputs) and _quantized_anyway(src.inputs[0], profile, placement, depth + 1)
    if placement.decisions[src.name].precision is not Precision.INT8:
        return False
    always_q = profile.quantize_outputs and src.op not in profile.output_q_optional
    return src.op in profile.support_ops or always_q


def _feeds_int8(tensor: gs.Tensor, profile: TargetProfile, placement: Placement, depth: int = 0) -> bool:
    for reader in tensor.outputs:
        if placement.decisions.get(reader.name, NodeDecision(Precision.FP32, "")).precision is Precision.INT8:
            return True
        layout = reader.op in profile.passthrough_ops or reader.op in _FOLDABLE
        if layout and reader.outputs and depth < 8 and _feeds_int8(reader.outputs[0], profile, placement,
                                                                   depth + 1):
            return True
    return False


def _fuses_into_add(node: gs.Node, tensor: gs.Tensor, profile: TargetProfile, placement: Placement) -> bool:
    """TensorRT: the Conv branch of a residual Add fuses into the Conv kernel; only the skip gets Q/DQ."""
    if node.op != "Add" or not profile.residual_add_skip_only or not tensor.inputs:
        return False
    src = tensor.inputs[0]
    return (src.op in WEIGHT_INPUT and len(tensor.outputs) == 1
            and placement.decisions[src.name].precision is Precision.INT8)


def _decide_width(node: gs.Node, opts: NodeOptions, profile: TargetProfile, precision: str) -> NodeDecision:
    """``_decide``; where ``Precision.INT16`` is asked, an INT8 decision whose activations are int16."""
    if opts.precision is not Precision.INT16:
        return _decide(node, opts, profile, precision)
    if not profile.int16_activations:
        raise RecipeError(f"node '{node.name}' ({node.op}): precision int16 (int16 activations, int8 "
                          f"weights) needs int16 integer kernels, which target {profile.name} does not "
                          "have; use int8, fp16 or fp32 there")
    decision = _decide(node, dataclasses.replace(opts, precision=Precision.INT8), profile, precision)
    if decision.precision is not Precision.INT8 or decision.integer_only:
        return decision
    return NodeDecision(Precision.INT8, "int16 activations, int8 weights (recipe)", wide=True)


def _decide(node: gs.Node, opts: NodeOptions, profile: TargetProfile, precision: str) -> NodeDecision:
    if precision == "fp32":
        return NodeDecision(Precision.FP32, "--precision fp32")
    if node.outputs and not any(_is_float(t) for t in node.outputs):
        return NodeDecision(Precision.FP32, "integer output (shape arithmetic, indices): nothing to quantize",
                            integer_only=True)
    wanted = opts.precision
    in_profile = node.op in profile.compute_ops or node.op in profile.support_ops
    if wanted is Precision.FP32:
        return NodeDecision(Precision.FP32, "recipe keeps it in fp32")
    if wanted is Precision.FP16:
        return NodeDecision(Precision.FP16, "recipe asks for fp16")
    if wanted in (Precision.INT8, Precision.INT4) and is_table_lookup(node):
        table = wanted if profile.int4_weights else Precision.INT8
        return NodeDecision(table, f"{table.value} weight-only table lookup (recipe): activations stay float")
    if wanted is None and profile.int8_tables and is_table_lookup(node):
        return NodeDecision(Precision.INT8, f"int8 weight-only table lookup: {profile.name} gathers the int8 "
                                            "rows, then dequantizes them")
    constant_operand = node.op not in WEIGHT_INPUT and any(
        constant_value(t) is not None or (t.dtype in FLOAT_TYPES and shape_determined(t))
        for t in node.inputs if t.name)  # a class token Expand-ed to the batch is a constant too
    if constant_operand and (in_profile or wanted):
        return NodeDecision(Precision.FP32, f"{node.op} with a constant operand has no fused int8 kernel")
    is_int4 = wanted is Precision.INT4 or (opts.weight_dtype == "int4" and in_profile)
    if is_int4 and node.op in MATRIX_OPS and profile.int4_weights and const_weight(node):
        return NodeDecision(Precision.INT4, "int4 weight-only (recipe)")
    if wanted is Precision.INT4 and in_profile:
        return NodeDecision(Precision.INT8, "int4 asked but only constant MatMul/Gemm weights take int4")
    if wanted is Precision.INT8:
        return NodeDecision(Precision.INT8, "recipe asks for int8")
    refusal = profile.float_kernel(node) if in_profile and profile.float_kernel is not None else ""
    if refusal:
        return NodeDecision(Precision.FP32, refusal)
    if in_profile:
        return NodeDecision(Precision.INT8, f"{node.op} has a fused int8 kernel on {profile.name}")
    return NodeDecision(Precision.FP32, f"{node.op}: no int8 kernel worth the Q/DQ on {profile.name}")


def _activation_inputs(node: gs.Node) -> list[gs.Tensor]:
    """Float, non-constant data inputs (weights and biases are handled as constants)."""
    skip = {BIAS_INPUT.get(node.op, -1)}
    if node.op in WEIGHT_INPUT and const_weight(node):
        skip.add(WEIGHT_INPUT[node.op])
    if node.op in ("Reshape", "Slice", "Gather", "Resize", "Expand", "Tile", "Pad", "Split",
                   "Squeeze", "Unsqueeze"):
        skip |= set(range(1, len(node.inputs)))
    return [t for i, t in enumerate(node.inputs)
            if i not in skip and t.name and constant_value(t) is None and _is_float(t)]


def _is_float(tensor: gs.Tensor) -> bool:
    return tensor.dtype is None or np.dtype(tensor.dtype) in FLOAT_TYPES


def _wants_output_q(graph: gs.Graph, node: gs.Node, profile: TargetProfile, placement: Placement) -> bool:
    out = node.outputs[0]
    if not profile.quantize_outputs or not _is_float(out):
        return False
    if node.op not in profile.output_q_optional:
        return True
    return _feeds_int8(out, profile, placement) and not is_graph_output(graph, out)


def _fold_activation(graph: gs.Graph, node: gs.Node, profile: TargetProfile,
                     placement: Placement) -> gs.Tensor | None:
    """Relu / Clip(0, hi) after a compute op becomes the clamp of its output Q (exact: 0 ↦ zp)."""
    folds = _foldable_activation(graph, node, profile)
    if folds is None:
        return None
    act, lo, hi = folds
    if placement.decisions[act.name].precision is Precision.FP32 and placement.options[act.name].precision:
        return None
    placement.folded[act.name] = node.name
    placement.decisions[act.name] = NodeDecision(Precision.INT8, f"folded into the output Q of {node.name}")
    placement.clamps[act.outputs[0].name] = (lo, hi)
    return act.outputs[0]


def _foldable_activation(graph: gs.Graph, node: gs.Node,
                         profile: TargetProfile) -> tuple[gs.Node, float, float] | None:
    """The Relu / Clip(0, hi) that the profile folds into ``node``'s output Q, with its clamp bounds:
    the output's only reader, the output no graph output."""
    out = node.outputs[0]
    if not profile.fold_activations or profile.symmetric_activations or len(out.outputs) != 1:
        return None
    act = out.outputs[0]
    if act.op not in _FOLDABLE or is_graph_output(graph, out):
        return None
    if act.op != "Clip":
        return act, 0.0, float("inf")
    bounds = _clip_bounds(act)
    return (act, *bounds) if bounds is not None and bounds[0] == 0.0 else None


def _clip_bounds(node: gs.Node) -> tuple[float, float] | None:
    if "min" in node.attrs or "max" in node.attrs:
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    values = [constant_value(t) if t.name else None for t in node.inputs[1:3]]
    if any(t.name and v is None for t, v in zip(node.inputs[1:3], values, strict=False)):
        return None
    lo = float(values[0]) if len(values) > 0 and values[0] is not None else -np.inf
    hi = float(values[1]) if len(values) > 1 and values[1] is not None else np.inf
    return lo, hi


def _propagate_passthrough(graph: gs.Graph, profile: TargetProfile, placement: Placement,
                           quantized: set[str]) -> None:
    """Layout-only ops between quantized tensors run on integers: input and output share a spec."""
    changed = True
    while changed:
        changed = False
        for node in graph.nodes:
            if node.op not in profile.passthrough_ops or not node.inputs or not node.outputs:
                continue
            if placement.decisions[node.name].precision is Precision.FP32 and \
                    placement.options[node.name].precision is Precision.FP32:
                continue
            src, dst = node.inputs[0], node.outputs[0]
            if not (_is_float(src) and _is_float(dst)) or constant_value(src) is not None:
                continue
            if src.name in quantized or dst.name in quantized:
                if not {src.name, dst.name} <= quantized:
                    quantized |= {src.name, dst.name}
                    changed = True
                if placement.group_of(src.name) != placement.group_of(dst.name):
                    placement.tie(src.name, dst.name)
                    placement.decisions[node.name] = NodeDecision(
                        Precision.INT8, f"{node.op} moves integers: shares its input's scale")
                    changed = True
    for node in graph.nodes:
        if node.op in profile.shared_scale_ops and placement.decisions[node.name].precision is Precision.INT8:
            for tensor in [*_activation_inputs(node), node.outputs[0]]:
                placement.tie(node.outputs[0].name, tensor.name)


def finalize(model: Model, placement: Placement, ranges: Mapping[str, Range],
             profile: TargetProfile, recipe: Recipe) -> QuantPlan:
    """Turn calibrated ranges and weights into specs; every decision keeps its reason."""
    plan = QuantPlan(nodes=dict(placement.decisions), folded_activations=dict(placement.folded),
                     notes=list(placement.notes))
    dtype = recipe.activation_dtype or profile.activation_dtype
    symmetric = profile.symmetric_activations if recipe.symmetric is None else recipe.symmetric
    wide = _wide_groups(model, placement) if dtype != "int16" else set()
    narrow = _eight_bit_groups(model, placement, profile) if dtype == "int16" or wide else set()
    kinds: dict[str, str] = {}  # scale group → its integer type
    for name in placement.activations:
        group = placement.group_of(name)
        kind = "int16" if group in wide or dtype == "int16" else dtype
        kinds[group] = "int8" if kind == "int16" and group in narrow else kind
    group_range: dict[str, list[float]] = {}
    for name in placement.activations:
        if name not in ranges:
            raise KeyError(f"no calibration range for tensor '{name}'")
        r = ranges[name]
        lo, hi = r.lo, r.hi
        if kinds[placement.group_of(name)] == "int16":  # bits to spare: room for what calibration missed
            lo, hi = lo * profile.int16_headroom, hi * profile.int16_headroom
        if name in placement.clamps:
            clo, chi = placement.clamps[name]
            lo, hi = max(lo, clo), min(hi, chi)
        acc = group_range.setdefault(placement.group_of(name), [np.inf, -np.inf])
        acc[0], acc[1] = min(acc[0], lo), max(acc[1], hi)
    for name in placement.activations:
        group = placement.group_of(name)
        lo, hi = group_range[group]
        plan.tensors[name] = activation_spec(lo, hi, kinds[group], symmetric, profile.power_of_two_scales)
    _apply_fixed_outputs(model, plan, placement, profile, dtype)
    for node in model.graph.nodes:
        plan_constants(node, plan, placement.options[node.name], profile)
    return plan


def _wide_groups(model: Model, placement: Placement) -> set[str]:
    """Scale groups of the activation tensors a wide node (``Precision.INT16``) reads or writes, the
    output of an activation folded into it included: they are int16."""
    wide = {name for name, d in placement.decisions.items() if d.wide}
    if not wide:
        return set()
    wide |= {act for act, producer in placement.folded.items() if producer in wide}
    planned = set(placement.activations)
    return {placement.group_of(t.name) for node in model.graph.nodes if node.name in wide
            for t in [*_activation_inputs(node), *node.outputs] if t.name in planned}


def _eight_bit_groups(model: Model, placement: Placement, profile: TargetProfile) -> set[str]:
    """Scale groups read by an op that takes 8-bit inputs only (``profile.eight_bit_inputs``: the
    integer program's 256-entry Sigmoid/Tanh tables; on an integer-only target, a float elementwise
    node too, which the program tabulates): they stay int8 when activations are int16."""
    planned = set(placement.activations)
    return {placement.group_of(t.name) for node in model.graph.nodes
            if _reads_eight_bits(node, placement, profile)
            for t in _activation_inputs(node) if t.name in planned}


def _reads_eight_bits(node: gs.Node, placement: Placement, profile: TargetProfile) -> bool:
    if node.op in profile.eight_bit_inputs:
        return True
    tabulated = placement.decisions[node.name].precision is not Precision.INT8 and node.op in ELEMENTWISE_OPS
    return profile.integer_only and tabulated


def _apply_fixed_outputs(model: Model, plan: QuantPlan, placement: Placement, profile: TargetProfile,
                         dtype: str) -> None:
    """Ops whose runtime imposes output parameters (TFLite Softmax: 1/256, -128) get exactly those."""
    for node in model.graph.nodes:
        fixed = profile.fixed_output_specs.get(node.op)
        if not fixed or plan.precision_of(node.name) is not Precision.INT8:
            continue
        group = placement.group_of(node.outputs[0].name)
        spec = QuantSpec(dtype, np.asarray(fixed[0], np.float32), np.asarray(fixed[1], np.int64))
        for name in placement.activations:
            if placement.group_of(name) == group:
                plan.tensors[name] = spec
        plan.notes.append(f"{node.name}: {node.op} output fixed at scale {fixed[0]:g}, zero point {fixed[1]}")
