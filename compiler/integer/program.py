"""Lower a QDQ ONNX model (dsqc's canonical form) to an integer ``Program``.

Accepted form: every activation between integer ops is ``Q → DQ`` (the int8 tensor in between is what
the program computes); weights are constant int8 (zero point 0) behind a DQ, per tensor or per output
channel; biases int32 behind a DQ (or float constants, quantized here with scale s_in·s_w). Each
supported float op must read DQ outputs and write a tensor read by exactly one Q. uint8 tensors (the
``onnx`` profile) are shifted to int8 (q − 128, zero point − 128): the real values are unchanged.
Anything else raises ``UnsupportedError`` naming the node.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from dsqc.errors import UnsupportedError
from dsqc.integer.context import Lowering
from dsqc.integer.lowering import LOWERINGS, lower_requantize
from dsqc.integer.ops import Program
from dsqc.static_shapes import fold_shapes, has_shape_ops, static_shapes


def lower(model: onnx.ModelProto, name: str = "model") -> Program:
    """The integer program of a QDQ model (batch 1, NCHW; shapes computed at run time are folded for
    batch 1 first)."""
    graph = fold_shapes(gs.import_onnx(static_shapes(model, 1))) if has_shape_ops(model) \
        else gs.import_onnx(model)
    graph.toposort()
    return run(Lowering(graph, name))


def run(ctx: Lowering) -> Program:
    """Lower every node of ``ctx.graph`` in order: Q nodes bind int tensors, other nodes go through
    their entry in ``LOWERINGS``."""
    _refuse_unsupported(ctx.graph)
    handled: set[str] = set()
    for node in ctx.graph.nodes:
        if node.op in _NOT_LOWERED:
            continue
        if node.op == "QuantizeLinear":
            ctx.quantize(node, handled, lower_requantize)
            continue
        ctx.ops.append(LOWERINGS[node.op](ctx, node))
        handled.add(node.outputs[0].name)
    outputs = [ctx.output_binding(t) for t in ctx.graph.outputs]
    return Program(ctx.name, ctx.tensors, ctx.ops, ctx.inputs, outputs, ctx.notes)


_NOT_LOWERED = ("DequantizeLinear", "Constant")


class MissingLowerings(UnsupportedError):
    """The model has ops the integer program has no lowering for (named in the message)."""


def _refuse_unsupported(graph: gs.Graph) -> None:
    """One error naming every op type the integer program has no lowering for (with its node count and
    first node), before any is lowered: a transformer lacks several, and one at a time hides the rest."""
    missing: dict[str, list[str]] = {}
    for node in graph.nodes:
        if node.op not in LOWERINGS and node.op not in _NOT_LOWERED and node.op != "QuantizeLinear":
            missing.setdefault(node.op, []).append(node.name)
    if not missing:
        return
    (op, nodes), *others = missing.items()
    rest = "".join(f"; {o} ({len(n)} node{'s' * (len(n) > 1)}, first '{n[0]}')" for o, n in others)
    raise MissingLowerings(f"node '{nodes[0]}' ({op}): not supported by the integer program "
                           f"({len(nodes)} node{'s' * (len(nodes) > 1)} of it{rest}; supported: "
                           f"{', '.join(sorted(LOWERINGS))})")
