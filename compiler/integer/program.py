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
    handled: set[str] = set()
    for node in ctx.graph.nodes:
        if node.op == "DequantizeLinear" or node.op == "Constant":
            continue
        if node.op == "QuantizeLinear":
            ctx.quantize(node, handled, lower_requantize)
            continue
        lowering = LOWERINGS.get(node.op)
        if lowering is None:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): not supported by the integer "
                                   f"program (supported: {', '.join(sorted(LOWERINGS))})")
        ctx.ops.append(lowering(ctx, node))
        handled.add(node.outputs[0].name)
    outputs = [ctx.output_binding(t) for t in ctx.graph.outputs]
    return Program(ctx.name, ctx.tensors, ctx.ops, ctx.inputs, outputs, ctx.notes)
