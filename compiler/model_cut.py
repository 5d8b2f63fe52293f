"""``--outputs``: build the part of a model that computes some of its tensors.

A detector's decode (anchors, strides, the DFL softmax, boxes in pixels beside scores in [0, 1]) is
where integer targets lose most and where an FPGA or NPU deployment hands over to the host CPU anyway.
``cut_at`` keeps the nodes those tensors depend on; they become the graph outputs, and every later
stage (calibration, verification, the artifacts) sees that model.
"""

from __future__ import annotations

import difflib
from collections.abc import Sequence

import onnx
import onnx_graphsurgeon as gs

from dsqc.errors import ModelError


def cut_at(proto: onnx.ModelProto, outputs: Sequence[str], label: str) -> onnx.ModelProto:
    """``proto`` with graph outputs ``outputs`` (tensor names) and only the nodes they depend on; its
    graph inputs stay as they are. An unknown name is an error naming it and the closest names."""
    if not outputs:
        return proto
    names = [o for n in proto.graph.node for o in n.output if o]
    known, inputs = set(names), {i.name for i in proto.graph.input}
    for name in outputs:
        if name in inputs:
            raise ModelError(f"--outputs: '{name}' is an input of {label}; name tensors its nodes compute")
        if name not in known:
            close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
            hint = f"; closest: {', '.join(close)}" if close else ""
            raise ModelError(f"--outputs: {label} has no tensor '{name}'{hint} (tensor names, as "
                             "Netron shows a node's outputs)")
    try:
        inferred = onnx.shape_inference.infer_shapes(proto)
    except Exception as exc:  # the checker raises several unrelated types
        raise ModelError(f"--outputs: shape inference failed on {label}: {exc}") from exc
    graph = gs.import_onnx(inferred)
    tensors = graph.tensors()
    cut = [tensors[name] for name in outputs]
    untyped = [t.name for t in cut if t.dtype is None]
    if untyped:
        raise ModelError(f"--outputs: the type of tensor '{untyped[0]}' of {label} cannot be inferred")
    graph.outputs = cut
    graph.cleanup(remove_unused_graph_inputs=False)
    model = gs.export_onnx(graph)
    model.ir_version = proto.ir_version
    del model.opset_import[:]
    model.opset_import.extend(proto.opset_import)
    return model
