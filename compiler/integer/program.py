"""Lower a QDQ ONNX model (dsqc's canonical form) to an integer ``Program``.

Accepted form: every activation between integer ops is ``Q → DQ`` (the int8 tensor in between is what
the program computes); weights are constant int8 (zero point 0) behind a DQ, per tensor or per output
channel; biases int32 behind a DQ (or float constants, quantized here with scale s_in·s_w). Each
supported float op must read DQ outputs and write a tensor read by exactly one Q, or end a float
island the program tabulates or computes its own way (``islands.py``: GELU, LayerNorm, a Mul by a
constant). uint8 tensors (the ``onnx`` profile) are shifted to int8 (q − 128, zero point − 128): the
real values are unchanged.
Anything else raises ``UnsupportedError`` naming the node.
"""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dsqc.errors import UnsupportedError
from dsqc.integer.context import Lowering
from dsqc.integer.islands import ISLAND_OPS, is_interior, is_island, lower_island
from dsqc.integer.lowering import LOWERINGS, SPLITS, lower_requantize
from dsqc.integer.ops import Program
from dsqc.ir import constant_value
from dsqc.static_shapes import fold_shapes, has_shape_ops, static_shapes


def lower(model: onnx.ModelProto, name: str = "model") -> Program:
    """The integer program of a QDQ model (batch 1, NCHW; shapes computed at run time are folded for
    batch 1 first)."""
    graph = fold_shapes(gs.import_onnx(static_shapes(model, 1))) if has_shape_ops(model) \
        else gs.import_onnx(model)
    _drop_empty_pads(graph)
    graph.toposort()
    ctx = Lowering(graph, name)
    kept = {n.name for n in graph.nodes}
    ctx.islands.update({n.name: "folded away for batch 1"
                        for n in model.graph.node
                        if n.name not in kept and n.op_type not in ("QuantizeLinear", "DequantizeLinear")})
    return run(ctx)


def _drop_empty_pads(graph: gs.Graph) -> None:
    """Pads whose amounts fold to zero for batch 1 (Swin's window padding at 224×224) are no-ops:
    their readers read the input instead."""
    for node in list(graph.nodes):
        pads = constant_value(node.inputs[1]) if node.op == "Pad" and len(node.inputs) > 1 else None
        if pads is None or np.any(np.asarray(pads) != 0) or any(t is node.outputs[0] for t in graph.outputs):
            continue
        source, out = node.inputs[0], node.outputs[0]
        for reader in list(out.outputs):
            for i, tensor in enumerate(reader.inputs):
                if tensor is out:
                    reader.inputs[i] = source
        node.outputs.clear()
    graph.cleanup()


def run(ctx: Lowering) -> Program:
    """Lower every node of ``ctx.graph`` in order: Q nodes bind int tensors, a node ending a float
    island goes through ``islands.lower_island`` (the float nodes before it wait for it), other nodes
    through their entry in ``LOWERINGS``."""
    _refuse_unsupported(ctx.graph)
    handled: set[str] = set()
    interior: set[str] = set()  # float nodes inside an island, lowered with the node that ends it
    covered: set[str] = set()
    for node in ctx.graph.nodes:
        if node.op in _NOT_LOWERED:
            continue
        if node.op == "QuantizeLinear":
            ctx.quantize(node, handled, lower_requantize)
            continue
        if is_interior(ctx.graph, node):
            interior.add(node.name)
            continue
        if node.op in SPLITS:  # one op per output
            parts = SPLITS[node.op](ctx, node)
            ctx.ops.extend(parts)
            handled.update(t.name for t in node.outputs)
            continue
        if is_island(node, node.op in LOWERINGS):
            island = lower_island(ctx, node, interior)
            op = island.op
            covered |= set(island.nodes)
            ctx.islands.update(dict.fromkeys(island.nodes, island.how))
        else:
            op = LOWERINGS[node.op](ctx, node)
        ctx.ops.append(op)
        handled.add(node.outputs[0].name)
    if interior - covered:
        first = next(n for n in ctx.graph.nodes if n.name in interior - covered)
        raise UnsupportedError(f"node '{first.name}' ({first.op}): output '{first.outputs[0].name}' stays "
                               "float and reaches no QuantizeLinear; the integer program needs every "
                               "value integer")
    outputs = [ctx.output_binding(t) for t in ctx.graph.outputs]
    q_outputs = {key: q_output for q_output, key in ctx.by_q_output.items()}
    return Program(ctx.name, ctx.tensors, ctx.ops, ctx.inputs, outputs, ctx.notes, ctx.islands, q_outputs)


_NOT_LOWERED = ("DequantizeLinear", "Constant")


class MissingLowerings(UnsupportedError):
    """The model has ops the integer program has no lowering for (named in the message)."""


def _refuse_unsupported(graph: gs.Graph) -> None:
    """One error naming every op type the integer program has no lowering for (with its node count and
    first node), before any is lowered: a transformer lacks several, and one at a time hides the rest."""
    missing: dict[str, list[str]] = {}
    for node in graph.nodes:
        known = node.op in LOWERINGS or node.op in SPLITS or node.op in ISLAND_OPS or node.op in _NOT_LOWERED
        if not known and node.op != "QuantizeLinear":
            missing.setdefault(node.op, []).append(node.name)
    if not missing:
        return
    (op, nodes), *others = missing.items()
    rest = "".join(f"; {o} ({len(n)} node{'s' * (len(n) > 1)}, first '{n[0]}')" for o, n in others)
    raise MissingLowerings(f"node '{nodes[0]}' ({op}): not supported by the integer program "
                           f"({len(nodes)} node{'s' * (len(nodes) > 1)} of it{rest}; supported: "
                           f"{', '.join(sorted(set(LOWERINGS) | set(SPLITS) | ISLAND_OPS))})")
