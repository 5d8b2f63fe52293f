"""Static shapes for backends that run one fixed batch (tflite, the integer program behind hls).

A ``torch.onnx.export`` with a dynamic batch computes reshapes and slices from ``Shape`` at run time
(ShuffleNet's channel shuffle and split, a detector's anchor grid). With the batch fixed, those chains
decide constants: :func:`static_shapes` pins the symbolic input dims and re-infers shapes,
:func:`fold_shapes` folds what they decide."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dsqc.errors import UnsupportedError
from dsqc.ir import constant_value

SHAPE_OPS = frozenset({"Shape", "Size", "ConstantOfShape", "Range", "Expand", "Cast"})


def has_shape_ops(model: onnx.ModelProto) -> bool:
    return any(n.op_type in SHAPE_OPS for n in model.graph.node)


def static_shapes(model: onnx.ModelProto, batch: int) -> onnx.ModelProto:
    """A copy of ``model`` with its symbolic input dims set to ``batch`` and shapes re-inferred."""
    proto = onnx.ModelProto()
    proto.CopyFrom(model)
    for value in proto.graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.dim_value = batch
    for value in proto.graph.output:
        for dim in value.type.tensor_type.shape.dim:
            if not dim.HasField("dim_value"):
                dim.ClearField("dim_param")
    del proto.graph.value_info[:]
    try:
        return onnx.shape_inference.infer_shapes(proto, strict_mode=True, data_prop=True)
    except (onnx.shape_inference.InferenceError, ValueError) as exc:
        raise UnsupportedError(f"shape inference with batch {batch} failed: {str(exc).splitlines()[0]}") \
            from exc


def fold_shapes(graph: gs.Graph, rounds: int = 12) -> gs.Graph:
    """Fold what the now-static shapes decide (Shape → Gather → Concat → Reshape chains, Slice bounds,
    Range, ConstantOfShape, Expand of constants) into constants, re-inferring shapes between rounds.
    DequantizeLinear of stored weights stays (weights stay int8); a Q→DQ pair on a tensor made constant
    here becomes the float constant the QDQ model computes."""
    if not any(n.op in SHAPE_OPS for n in graph.nodes):
        return graph
    for _ in range(rounds):
        if not _fold_quantized_constants(graph) and not any(n.op in SHAPE_OPS for n in graph.nodes):
            break
        graph.fold_constants(fold_shapes=True, error_ok=True)
        graph.cleanup(remove_unused_graph_inputs=False)
        proto = gs.export_onnx(graph)
        del proto.graph.value_info[:]
        graph = gs.import_onnx(onnx.shape_inference.infer_shapes(proto, data_prop=True))
    return graph


def _fold_quantized_constants(graph: gs.Graph) -> bool:
    """Q(constant) → DQ becomes the float constant it computes (per-tensor int8/uint8 only)."""
    folded = False
    for q in [n for n in graph.nodes if n.op == "QuantizeLinear" and isinstance(n.inputs[0], gs.Constant)]:
        scale = constant_value(q.inputs[1])
        given = len(q.inputs) > 2 and bool(q.inputs[2].name)
        zero = constant_value(q.inputs[2]) if given else np.zeros((), np.uint8)
        if scale is None or zero is None or scale.size != 1 or zero.dtype not in (np.int8, np.uint8):
            continue
        info = np.iinfo(zero.dtype)
        s, z = np.float32(scale.reshape(())), int(zero.reshape(()))
        ints = np.clip(np.rint(q.inputs[0].values.astype(np.float32) / s) + z, info.min, info.max)
        for dq in [r for r in q.outputs[0].outputs if r.op == "DequantizeLinear"]:
            out = dq.outputs[0]
            dq.outputs.clear()
            out.to_constant(np.asarray((ints - z) * s, np.float32))  # a 0-d input computes a numpy scalar
            folded = True
    graph.cleanup(remove_unused_graph_inputs=False)
    return folded
