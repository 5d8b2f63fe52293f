"""Run-time activation quantization as LiteRT's hybrid kernels do it: one scale per row or per image.

ONNX's ``DynamicQuantizeLinear`` measures one range for the whole tensor, which is what ORT's dynamic
kernels do. LiteRT's hybrid FULLY_CONNECTED measures each row of its ``[rows, K]`` input apart (each
token of a transformer), and its hybrid CONV_2D each image (``AsymmetricQuantizeFloats``):

    lo, hi = min(0, min(row)), max(0, max(row));  scale = (hi - lo) / 255  (1 where hi == lo)
    zp = clamp(round(-128 - lo / scale), -128, 127);  q = clamp(round(x / scale) + zp, -128, 127)

The canonical model of a target whose profile says ``dynamic_scale = "row"`` reads such an activation
through one node, ``ai.dsqc.DynamicQuantizeRows`` (over the last axis) or ``DynamicQuantizeImages``
(over all but the first), whose output is ``(q - zp) · scale``, the value the integer kernel multiplies.
Each is a model-local ONNX function of standard ops, so ORT runs it as the reference and
``onnx.checker`` validates it; the ``tflite`` lowering replaces it by the hybrid kernel itself.
"""

from __future__ import annotations

import onnx
from onnx import helper

from dsqc.ir import default_opset

DOMAIN = "ai.dsqc"
ROWS = "DynamicQuantizeRows"  # a MatMul/Gemm input: one scale per row (reduced over the last axis)
IMAGES = "DynamicQuantizeImages"  # a 2-D Conv input [N, C, H, W]: one scale per image
REDUCED_AXES = {ROWS: [-1], IMAGES: [1, 2, 3]}
MIN_IR_VERSION = 8  # model-local functions


def quantizer_op(op_type: str) -> str:
    """The quantizer node in front of a dynamic ``op_type`` (MatMul, Gemm, Conv)."""
    return IMAGES if op_type == "Conv" else ROWS


def is_quantizer(node: onnx.NodeProto) -> bool:
    return node.domain == DOMAIN and node.op_type in REDUCED_AXES


def quantizer_node(op: str, x: str, y: str, name: str) -> onnx.NodeProto:
    return helper.make_node(op, [x], [y], name=name, domain=DOMAIN)


def add_functions(model: onnx.ModelProto) -> None:
    """Give ``model`` the function bodies of the quantizers its graph uses (once each, in its default
    opset) and the opset import of their domain."""
    used = sorted({n.op_type for n in model.graph.node if is_quantizer(n)})
    if not used:
        return
    have = {(f.domain, f.name) for f in model.functions}
    opset = default_opset(model)
    model.functions.extend(_function(op, opset) for op in used if (DOMAIN, op) not in have)
    if all(o.domain != DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, 1))
    model.ir_version = max(model.ir_version, MIN_IR_VERSION)


def _function(op: str, opset: int) -> onnx.FunctionProto:
    """``op``'s body in the model's default opset (ReduceMin/Max take ``axes`` as an input from 18)."""
    n = helper.make_node
    axes = REDUCED_AXES[op]
    if opset >= 18:
        nodes = [n("Constant", [], ["axes"], value_ints=axes),
                 n("ReduceMin", ["x", "axes"], ["x_min"], keepdims=1),
                 n("ReduceMax", ["x", "axes"], ["x_max"], keepdims=1)]
    else:
        nodes = [n("ReduceMin", ["x"], ["x_min"], axes=axes, keepdims=1),
                 n("ReduceMax", ["x"], ["x_max"], axes=axes, keepdims=1)]
    constants = {"zero": 0.0, "one": 1.0, "levels": 255.0, "qmin": -128.0, "qmax": 127.0}
    nodes += [n("Constant", [], [name], value_float=value) for name, value in constants.items()]
    nodes += [
        n("Min", ["x_min", "zero"], ["lo"]), n("Max", ["x_max", "zero"], ["hi"]),
        n("Sub", ["hi", "lo"], ["span"]), n("Div", ["span", "levels"], ["raw_scale"]),
        n("Equal", ["raw_scale", "zero"], ["flat"]), n("Where", ["flat", "one", "raw_scale"], ["scale"]),
        n("Div", ["lo", "scale"], ["lo_steps"]), n("Sub", ["qmin", "lo_steps"], ["zp_exact"]),
        n("Round", ["zp_exact"], ["zp_round"]), n("Clip", ["zp_round", "qmin", "qmax"], ["zp"]),
        n("Div", ["x", "scale"], ["steps"]), n("Round", ["steps"], ["steps_round"]),
        n("Add", ["steps_round", "zp"], ["q_exact"]), n("Clip", ["q_exact", "qmin", "qmax"], ["q"]),
        n("Sub", ["q", "zp"], ["centred"]), n("Mul", ["centred", "scale"], ["y"]),
    ]
    return helper.make_function(DOMAIN, op, ["x"], ["y"], nodes, [helper.make_opsetid("", opset)])
