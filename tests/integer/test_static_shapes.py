"""``dsqc.static_shapes.fold_shapes``: what a fixed batch decides becomes constants the integer program and
the tflite lowering can read."""

from __future__ import annotations

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from dsqc.static_shapes import fold_shapes, static_shapes


def test_a_quantized_scalar_constant_folds_to_an_array() -> None:
    """Swin-T's attention scale (a scalar behind Q → DQ) folded to a numpy scalar, not an array, and the
    next fold's graph copy crashed the hls build with an onnx_graphsurgeon traceback."""
    inits = [numpy_helper.from_array(np.asarray(0.1767767, np.float32), "scale_value"),
             numpy_helper.from_array(np.asarray(0.01, np.float32), "q_scale"),
             numpy_helper.from_array(np.asarray(0, np.int8), "q_zero"),
             numpy_helper.from_array(np.asarray([-1], np.int64), "flat")]
    nodes = [helper.make_node("QuantizeLinear", ["scale_value", "q_scale", "q_zero"], ["q"]),
             helper.make_node("DequantizeLinear", ["q", "q_scale", "q_zero"], ["scale"]),
             helper.make_node("Shape", ["x"], ["shape"]),  # a shape op: fold_shapes has work to do
             helper.make_node("Reshape", ["x", "flat"], ["flat_x"]),
             helper.make_node("Mul", ["flat_x", "scale"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    folded = fold_shapes(gs.import_onnx(static_shapes(model, 1)))
    scale = next(n for n in folded.nodes if n.op == "Mul").inputs[1]
    assert isinstance(scale, gs.Constant) and isinstance(scale.values, np.ndarray)
    assert float(scale.values) == np.float32(18 * np.float64(np.float32(0.01)))  # what the QDQ model computes
    folded.copy()  # crashed here
    onnx.checker.check_model(gs.export_onnx(folded))
