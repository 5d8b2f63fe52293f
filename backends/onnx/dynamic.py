"""Dynamic quantization for ONNX Runtime: the canonical ``DynamicQuantizeLinear → DequantizeLinear``
(activation) + ``DequantizeLinear`` (int8 per-channel weight) form rewritten into integer kernels.

MatMul and Gemm become ``com.microsoft.DynamicQuantizeMatMul`` (quantizes its float input at run time,
u8·s8 GEMM, per-column weight scales, bias fused) by default. ``kernel="integer"`` writes the
standard-ONNX chain ``DynamicQuantizeLinear → MatMulInteger → Cast → Mul → Mul → Add`` (any ONNX
runtime), ``kernel="itf"`` a shared ``DynamicQuantizeLinear`` + ``MatMulIntegerToFloat``. All three
compute the same numbers and timed within noise of each other on MiniLM and the small transformer
(tools/bench/DYNAMIC.md); ``fused`` is one node per layer. Conv has no fused contrib op:
``DynamicQuantizeLinear → ConvInteger → Cast → Mul(x_scale · w_scale[c]) → Add(bias)``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dsqc.errors import UnsupportedError

KERNELS = ("fused", "itf", "integer")
MS_DOMAIN = "com.microsoft"


def lower_dynamic(model: onnx.ModelProto, kernel: str = "fused") -> onnx.ModelProto:
    """The canonical dynamic model with every run-time quantized MatMul/Gemm/Conv on integer kernels."""
    if kernel not in KERNELS:
        raise UnsupportedError(f"dynamic kernel {kernel!r}: choose one of {', '.join(KERNELS)}")
    out = onnx.ModelProto()
    out.CopyFrom(model)
    g = out.graph
    inits = {i.name: i for i in g.initializer}
    producers = {o: n for n in g.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in g.node:
        for name in n.input:
            readers.setdefault(name, []).append(n)
    outputs = {o.name for o in g.output}
    replace: dict[int, list[onnx.NodeProto]] = {}  # id(node) → nodes replacing it
    drop: set[int] = set()
    for node in g.node:
        match = _match(node, producers, inits)
        if match is None:
            continue
        dyn, dq_w = match
        wq = numpy_helper.to_array(inits[dq_w.input[0]])
        ws = numpy_helper.to_array(inits[dq_w.input[1]]).astype(np.float32)
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        bias, final, bias_add = _bias(node, attrs, readers, inits, outputs)
        if bias_add is not None:
            drop.add(id(bias_add))
        tag = node.name or node.output[0]
        if node.op_type == "Conv":
            new, extra = _conv(tag, dyn, wq, ws, bias, final, attrs)
        else:
            if node.op_type == "Gemm" and attrs.get("transB"):
                wq, ws = wq.T.copy(), ws
            new, extra = _matmul(tag, dyn, wq, ws, bias, final, kernel)
        g.initializer.extend(extra)
        replace[id(node)] = new
    if not replace:
        return out
    nodes = []
    for node in g.node:
        if id(node) in drop:
            continue
        nodes.extend(replace.get(id(node), [node]))
    del g.node[:]
    g.node.extend(nodes)
    _remove_dead(g)
    if not any(o.domain == MS_DOMAIN for o in out.opset_import):
        out.opset_import.append(helper.make_opsetid(MS_DOMAIN, 1))
    return out


def _match(node: onnx.NodeProto, producers: dict[str, onnx.NodeProto],
           inits: dict[str, onnx.TensorProto]) -> tuple[onnx.NodeProto, onnx.NodeProto] | None:
    """``(DynamicQuantizeLinear, weight DequantizeLinear)`` when ``node`` is a canonical dynamic node."""
    if node.op_type not in ("MatMul", "Gemm", "Conv") or len(node.input) < 2:
        return None
    dq_x, dq_w = producers.get(node.input[0]), producers.get(node.input[1])
    if dq_x is None or dq_w is None or {dq_x.op_type, dq_w.op_type} != {"DequantizeLinear"}:
        return None
    dyn = producers.get(dq_x.input[0])
    if dyn is None or dyn.op_type != "DynamicQuantizeLinear" or dq_w.input[0] not in inits:
        return None
    return dyn, dq_w


def _bias(node: onnx.NodeProto, attrs: dict[str, object], readers: dict[str, list[onnx.NodeProto]],
          inits: dict[str, onnx.TensorProto], outputs: set[str]
          ) -> tuple[np.ndarray | None, str, onnx.NodeProto | None]:
    """The node's bias (its own input, or a following ``Add`` of a constant 1-D vector, folded) and the
    tensor the rewritten node must produce."""
    if len(node.input) > 2 and node.input[2]:
        bias = numpy_helper.to_array(inits[node.input[2]]) if node.input[2] in inits else None
        if bias is None:
            raise UnsupportedError(f"node '{node.name}' ({node.op_type}): a bias that is not a constant "
                                   "cannot be fused into the dynamic kernel")
        return bias.astype(np.float32).reshape(-1), node.output[0], None
    out = node.output[0]
    users = readers.get(out, [])
    if node.op_type == "Conv" or len(users) != 1 or users[0].op_type != "Add" or out in outputs:
        return None, out, None
    add = users[0]
    other = add.input[1] if add.input[0] == out else add.input[0]
    value = numpy_helper.to_array(inits[other]) if other in inits else None
    if value is None or value.ndim != 1:
        return None, out, None
    return value.astype(np.float32), add.output[0], add


def _matmul(tag: str, dyn: onnx.NodeProto, wq: np.ndarray, ws: np.ndarray, bias: np.ndarray | None,
            final: str, kernel: str) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    x = dyn.input[0]
    names = {k: f"{tag}_{k}" for k in ("wq", "ws", "bias", "int", "float", "scaled", "xs_ws", "pre_bias")}
    extra = [numpy_helper.from_array(wq, names["wq"]), numpy_helper.from_array(ws, names["ws"])]
    if bias is not None:
        extra.append(numpy_helper.from_array(bias, names["bias"]))
    b = names["bias"] if bias is not None else ""
    if kernel == "fused":
        return [helper.make_node("DynamicQuantizeMatMul", [x, names["wq"], names["ws"], "", b], [final],
                                 name=f"{tag}_DynamicQuantizeMatMul", domain=MS_DOMAIN)], extra
    xq, xs, xz = dyn.output
    nodes: list[onnx.NodeProto] = []  # the canonical DynamicQuantizeLinear stays, shared by its readers
    if kernel == "itf":
        nodes.append(helper.make_node("MatMulIntegerToFloat", [xq, names["wq"], xs, names["ws"], xz, "", b],
                                      [final], name=f"{tag}_MatMulIntegerToFloat", domain=MS_DOMAIN))
        return nodes, extra
    pre = names["pre_bias"] if bias is not None else final
    nodes += [helper.make_node("MatMulInteger", [xq, names["wq"], xz], [names["int"]],
                               name=f"{tag}_MatMulInteger"),
              helper.make_node("Cast", [names["int"]], [names["float"]], to=onnx.TensorProto.FLOAT,
                               name=f"{tag}_Cast"),
              helper.make_node("Mul", [xs, names["ws"]], [names["xs_ws"]], name=f"{tag}_ScaleMul"),
              helper.make_node("Mul", [names["float"], names["xs_ws"]], [pre], name=f"{tag}_Mul")]
    if bias is not None:
        nodes.append(helper.make_node("Add", [pre, names["bias"]], [final], name=f"{tag}_BiasAdd"))
    return nodes, extra


def _conv(tag: str, dyn: onnx.NodeProto, wq: np.ndarray, ws: np.ndarray, bias: np.ndarray | None, final: str,
          attrs: dict[str, object]) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    """ConvInteger takes uint8 weights with one zero point in ORT's CPU kernel: int8 values + 128 with
    zero point 128; the per-channel scales are applied after, in float."""
    xq, xs, xz = dyn.output
    wu8 = (wq.astype(np.int16) + 128).astype(np.uint8)
    names = {k: f"{tag}_{k}" for k in ("wq", "wz", "ws", "bias", "int", "float", "xs_ws", "pre_bias")}
    view = (1, -1, 1, 1)
    extra = [numpy_helper.from_array(wu8, names["wq"]),
             numpy_helper.from_array(np.asarray(128, np.uint8), names["wz"]),  # ORT: per-tensor zero point
             numpy_helper.from_array(ws.reshape(view), names["ws"])]
    kept = ("dilations", "group", "kernel_shape", "pads", "strides", "auto_pad")
    conv_attrs: dict[str, Any] = {k: v for k, v in attrs.items() if k in kept}
    pre = names["pre_bias"] if bias is not None else final
    nodes = [helper.make_node("ConvInteger", [xq, names["wq"], xz, names["wz"]], [names["int"]],
                              name=f"{tag}_ConvInteger", **conv_attrs),
             helper.make_node("Cast", [names["int"]], [names["float"]], to=onnx.TensorProto.FLOAT,
                              name=f"{tag}_Cast"),
             helper.make_node("Mul", [xs, names["ws"]], [names["xs_ws"]], name=f"{tag}_ScaleMul"),
             helper.make_node("Mul", [names["float"], names["xs_ws"]], [pre], name=f"{tag}_Mul")]
    if bias is not None:
        extra.append(numpy_helper.from_array(bias.reshape(view), names["bias"]))
        nodes.append(helper.make_node("Add", [pre, names["bias"]], [final], name=f"{tag}_BiasAdd"))
    return nodes, extra


def _remove_dead(g: onnx.GraphProto) -> None:
    """Drop nodes whose outputs nobody reads (the replaced DequantizeLinear nodes, a DynamicQuantizeLinear
    the fused kernel no longer needs) and unused initializers."""
    needed = {o.name for o in g.output}
    alive: list[onnx.NodeProto] = []
    for node in reversed(g.node):
        if any(o in needed for o in node.output):
            alive.append(node)
            needed.update(node.input)
    del g.node[:]
    g.node.extend(reversed(alive))
    kept = [i for i in g.initializer if i.name in needed]
    del g.initializer[:]
    g.initializer.extend(kept)
