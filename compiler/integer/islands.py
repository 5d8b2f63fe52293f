"""Float islands of a QDQ model, lowered to integer ops.

On an integer-only target the planner leaves float the nodes that have no int8 kernel of their own —
LayerNorm, GELU, a Mul or Div by a constant, a Concat with a constant — between the DQs of integer
tensors and one Q. An *island* is such a node, with the float nodes behind it up to those DQs and
constants:

- elementwise ops on one 8-bit tensor with scalar constants (GELU, a Mul by a scalar): a table of 256
  entries, each code run through the island's own nodes by ONNX Runtime, so it equals DQ → island → Q
  of the QDQ model code for code;
- an Add or Sub of a constant tensor (ViT's position embedding, Swin's relative position bias), after
  any Mul/Div by positive scalars: ``AddConstantOp``, the constant in the accumulator's fixed point;
- a Concat with constants (ViT's class token) followed by the Add of a constant: constant rows on the
  output's grid, the tensor's rows an ``AddConstantOp``, concatenated as copies (a Concat with a
  constant alone is ``lowering.lower_concat``'s);
- a Mul or Div of an NCHW tensor by a constant that varies along the channel axis only (ConvNeXt's
  layer scale): a depthwise 1×1 integer conv, weights ±1, the constant in the per-channel multipliers;
- LayerNormalization over the last axis: ``LayerNormOp`` (integer mean, variance and square root);
- MatMul by a constant followed by the Add of a constant bias, with no Q between (a Linear, one kernel
  where the profile has ``fused_matmul_bias``): one ``DenseOp`` with that bias.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs
from onnx import TensorProto, helper, numpy_helper

from dsqc.errors import UnsupportedError
from dsqc.integer.context import Lowering
from dsqc.integer.fixedpoint import common_multipliers
from dsqc.integer.lowering import lower_dense, requant_to
from dsqc.integer.ops import (
    AddConstantOp,
    ConcatOp,
    ConvOp,
    LayerNormOp,
    LookupOp,
    Op,
    Requant,
    TensorInfo,
)
from dsqc.ir import constant_value, is_graph_output
from dsqc.op_kinds import ELEMENTWISE_OPS

ISLAND_OPS = ELEMENTWISE_OPS | {"LayerNormalization"}
_ARITHMETIC = ("Add", "Sub", "Mul", "Div")
_FRAC_BITS = 16  # fractional bits of a LayerNorm's normalized value


def _fail(node: gs.Node, why: str) -> UnsupportedError:
    return UnsupportedError(f"node '{node.name}' ({node.op}): {why}")


def is_interior(graph: gs.Graph, node: gs.Node) -> bool:
    """A float node whose output only other float nodes read: part of the island of a node after it."""
    if not node.outputs or is_graph_output(graph, node.outputs[0]):
        return False
    readers = list(node.outputs[0].outputs)
    return bool(readers) and all(r.op not in ("QuantizeLinear", "DequantizeLinear") for r in readers)


def is_island(node: gs.Node, lowerable: bool) -> bool:
    """Whether ``node`` (its output read by a Q) ends an island: it reads a float node's output, has no
    integer lowering of its own, or is arithmetic with a constant operand."""
    if not lowerable:
        return True
    if any(t.inputs and t.inputs[0].op not in ("DequantizeLinear", "Constant") for t in node.inputs):
        return True
    return node.op in _ARITHMETIC and any(constant_value(t) is not None for t in node.inputs if t.name)


class _Cone:
    """The island ending at one node: its float nodes in graph order, the integer tensor it reads (one,
    maybe through several DQs) and its constants (real values)."""

    def __init__(self, ctx: Lowering, end: gs.Node, interior: set[str]) -> None:
        self.end = end
        self.nodes: list[gs.Node] = []
        self.leaves: dict[str, TensorInfo] = {}  # DQ output name → the int tensor behind it
        self.constants: dict[str, np.ndarray] = {}
        order = {id(n): i for i, n in enumerate(ctx.graph.nodes)}
        seen: set[str] = set()
        stack = [end]
        while stack:
            node = stack.pop()
            if node.name in seen:
                continue
            seen.add(node.name)
            self.nodes.append(node)
            for tensor in (t for t in node.inputs if t.name):
                self._visit(ctx, node, tensor, interior, stack)
        self.nodes.sort(key=lambda n: order[id(n)])

    def _visit(self, ctx: Lowering, node: gs.Node, tensor: gs.Tensor, interior: set[str],
               stack: list[gs.Node]) -> None:
        value = constant_value(tensor)
        producer = tensor.inputs[0] if tensor.inputs else None
        if value is not None:
            self.constants[tensor.name] = np.asarray(value)
        elif producer is not None and producer.op == "DequantizeLinear":
            weight = constant_value(producer.inputs[0])
            if weight is not None:
                self.constants[tensor.name] = _dequantize(ctx, producer, np.asarray(weight))
            else:
                self.leaves[tensor.name] = ctx.act_tensor(node, tensor)
        elif producer is not None and producer.name in interior:
            stack.append(producer)
        else:
            raise _fail(node, f"input '{tensor.name}' is float, not an integer tensor behind a "
                              "DequantizeLinear or the output of float nodes the program can tabulate")

    @property
    def source(self) -> TensorInfo:
        """The one integer tensor the island reads."""
        names = {info.name for info in self.leaves.values()}
        if len(names) != 1:
            raise _fail(self.end, f"the float ops {self.ops} read {len(names)} integer tensors; the program "
                                  "tabulates functions of one tensor only")
        infos = list(self.leaves.values())
        if any(not i.same_quant(infos[0]) for i in infos):
            raise _fail(self.end, f"tensor '{infos[0].name}' is dequantized with two different scales")
        return infos[0]

    @property
    def ops(self) -> str:
        return " → ".join(n.op for n in self.nodes)


@dataclass(frozen=True)
class Island:
    """The integer op an island became, the float nodes it covers and how the program computes them."""

    op: Op
    nodes: list[str]
    how: str


def lower_island(ctx: Lowering, end: gs.Node, interior: set[str]) -> Island:
    """The integer op of the island ending at ``end``."""
    cone = _Cone(ctx, end, interior)
    names = [n.name for n in cone.nodes]
    if end.op == "LayerNormalization" and len(cone.nodes) == 1:
        return Island(lower_layernorm(ctx, end), names, "integer LayerNorm")
    if [n.op for n in cone.nodes] == ["MatMul", "Add"] and len(cone.leaves) == 1:
        return Island(lower_dense(ctx, cone.nodes[0], bias_add=end), names, "int32 bias of a Linear")
    if [n.op for n in cone.nodes] == ["Concat", "Add"]:
        return Island(_concat_add_constant(ctx, cone), names, "concatenation with a constant, constant added")
    odd = [n for n in cone.nodes if n.op not in ELEMENTWISE_OPS]
    if odd:
        raise _fail(odd[0], f"not supported by the integer program inside the float ops {cone.ops} "
                            "(tabulated: elementwise ops on one tensor with scalar constants)")
    x = cone.source
    if all(v.size == 1 for v in cone.constants.values()):
        return Island(_table(ctx, cone, x), names, f"256-entry table ({cone.ops})")
    wide = {n: v for n, v in cone.constants.items() if v.size > 1}
    if end.op in ("Add", "Sub") and len(wide) == 1 and any(t.name in wide for t in end.inputs):
        factor = _positive_factor([n for n in cone.nodes if n is not end])  # attention's 1/√d first
        op = _add_constant(ctx, end, x, next(iter(wide.items())), factor)
        return Island(op, names, "constant added in integers")
    if len(cone.nodes) == 1 and end.op in ("Mul", "Div") and len(cone.constants) == 1:
        op = _channel_scale(ctx, end, x, next(iter(cone.constants.values())))
        return Island(op, names, "per-channel scale (depthwise 1x1 conv)")
    raise _fail(end, f"the float ops {cone.ops} use a constant of more than one value; the integer "
                     "program tabulates scalar constants, or a Mul/Div by one value per NCHW channel")


def _table(ctx: Lowering, cone: _Cone, x: TensorInfo) -> Op:
    """Each of the 256 codes of ``x`` through the island's nodes in ONNX Runtime, then quantized by the
    end's Q (half to even)."""
    if x.wide:
        raise _fail(cone.end, f"input '{x.name}' is int16; the table of the float ops {cone.ops} takes "
                              "int8 inputs (256 codes)")
    out = ctx.output(cone.end, x.shape)
    codes = np.arange(-128, 128, dtype=np.float32)
    real = (codes - np.float32(x.zero_point)) * np.float32(x.scale)
    value = np.nan_to_num(_run_island(ctx, cone, real), nan=0.0)  # ±inf saturates in ``codes``
    return LookupOp(cone.end.name, cone.ops, [x.name], out.name, table=out.codes(value))


def _run_island(ctx: Lowering, cone: _Cone, real: np.ndarray) -> np.ndarray:
    """The island's nodes on ``real`` (every leaf fed the same values) in ONNX Runtime, graph
    optimizations off as in the QDQ model's reference run."""
    import onnxruntime as ort

    nodes = [helper.make_node(n.op, [t.name for t in n.inputs], [t.name for t in n.outputs], name=n.name,
                              domain=n.domain or "", **n.attrs) for n in cone.nodes]
    inits = [numpy_helper.from_array(v, name) for name, v in cone.constants.items()]
    inputs = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [real.size]) for name in cone.leaves]
    output = helper.make_tensor_value_info(cone.end.outputs[0].name, TensorProto.FLOAT, None)
    graph = helper.make_graph(nodes, "island", inputs, [output], inits)
    opset = int(ctx.graph.opset or 13)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, onnx.IR_VERSION)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    try:
        session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        result = session.run(None, dict.fromkeys(cone.leaves, real))[0]
    except Exception as exc:  # ORT raises its own types; the node is what matters here
        raise _fail(cone.end, f"ONNX Runtime could not tabulate the float ops {cone.ops}: {exc}") from exc
    return np.asarray(result, np.float32).reshape(-1)


def _add_constant(ctx: Lowering, node: gs.Node, x: TensorInfo, constant: tuple[str, np.ndarray],
                  factor: float = 1.0, out: TensorInfo | None = None) -> Op:
    """``factor·x + c`` (or ``− c``) with ``c`` a constant tensor (ViT's position embedding, Swin's
    relative position bias): ``c`` in the output's fixed point, added to the rescaled ``x`` before one
    rounding."""
    name, value = constant
    if node.op == "Sub" and node.inputs[1].name != name:
        raise _fail(node, "subtracts the activation from a constant; the integer program takes x − c only")
    try:
        full = np.broadcast_to(value.astype(np.float64), x.shape)
    except ValueError as exc:
        raise _fail(node, f"constant of shape {value.shape} does not broadcast to {x.shape}") from exc
    out = out or ctx.output(node, x.shape)
    (mult,), shift = common_multipliers([x.scale * factor / out.scale], f"node '{node.name}'")
    sign = -1.0 if node.op == "Sub" else 1.0
    steps = np.clip(sign * full / out.scale * 2.0**shift, -(2.0**61), 2.0**61)
    requant = Requant(np.ones(1, np.int64), np.array([shift], np.int64), out.zero_point, out.qmin, out.qmax)
    return AddConstantOp(node.name, node.op, [x.name], out.name, in_zp=x.zero_point, in_mult=mult,
                         constant=np.rint(steps).astype(np.int64), requant=requant)


def _concat_add_constant(ctx: Lowering, cone: _Cone) -> Op:
    """``Concat(constants…, x) + P`` (ViT: the class token, then the position embedding): each constant
    part plus its slice of ``P`` is one constant on the output's grid, rounded once, and ``x`` plus its
    slice an ``AddConstantOp``; the concatenation then copies. The class token never sits on the patch
    tokens' grid before the addition (ViT-B/32: its own SQNR 12.5 dB there)."""
    concat, add = cone.nodes
    x = cone.source
    if len(concat.outputs[0].outputs) != 1:
        raise _fail(concat, "a Concat with a constant feeding more than one Add of a constant")
    pos_name = next(t.name for t in add.inputs if t.name in cone.constants)
    pos = cone.constants[pos_name]
    parts = [cone.constants.get(t.name) for t in concat.inputs]
    if sum(p is None for p in parts) != 1:
        raise _fail(concat, "concatenates more than one integer tensor with constants")
    shapes = [x.shape if p is None else tuple(np.shape(p)) for p in parts]
    axis = int(concat.attrs.get("axis", 1)) % len(x.shape)
    total = list(x.shape)
    total[axis] = sum(shape[axis] for shape in shapes)
    out = ctx.output(add, tuple(total))
    full = np.broadcast_to(pos.astype(np.float32), total)
    names, start = [], 0
    for index, (part, shape) in enumerate(zip(parts, shapes, strict=True)):
        window = [slice(None)] * len(total)
        window[axis] = slice(start, start + shape[axis])
        start += shape[axis]
        name = f"{add.name}/part{index}"
        names.append(name)
        if part is not None:  # added in float32, as ORT adds
            ctx.constant_tensor(concat.name, name, part.astype(np.float32) + full[tuple(window)], out)
        else:
            ctx.ops.append(_add_constant(ctx, add, x, (pos_name, full[tuple(window)]),
                                         out=ctx.tensor_like(name, shape, out)))
    copies = tuple(requant_to(concat, np.array([1.0]), out) for _ in names)
    return ConcatOp(concat.name, "Concat", names, out.name, axis=axis,
                    in_zps=(out.zero_point,) * len(names), requants=copies)


def _channel_scale(ctx: Lowering, node: gs.Node, x: TensorInfo, constant: np.ndarray) -> Op:
    """``x · g[c]`` (or ``x / g[c]``) with ``g`` one value per channel of an NCHW ``x``: a depthwise 1×1
    conv with weights sign(g), |g| in the per-channel multipliers (exact to the multipliers' 31 bits)."""
    if len(x.shape) != 4:
        raise _fail(node, f"a constant of more than one value times a {len(x.shape)}-D tensor; the integer "
                          "program scales NCHW channels only")
    channels = x.shape[1]
    try:
        full = np.broadcast_to(constant.astype(np.float32), x.shape)
    except ValueError as exc:
        raise _fail(node, f"constant of shape {constant.shape} does not broadcast to {x.shape}") from exc
    per_channel = full[0, :, 0, 0]
    if not np.array_equal(np.broadcast_to(per_channel.reshape(1, channels, 1, 1), x.shape), full):
        raise _fail(node, f"constant of shape {constant.shape} varies along more than the channel axis "
                          f"of {x.shape}; the integer program scales NCHW channels only")
    gain = (np.float32(1) / per_channel if node.op == "Div" else per_channel).astype(np.float64)
    if not np.all(np.isfinite(gain)):
        raise _fail(node, "the constant has zero or non-finite values")
    out = ctx.output(node, x.shape)
    weight = np.sign(gain).astype(np.int8).reshape(channels, 1, 1, 1)
    magnitude = np.where(gain == 0, 1.0, np.abs(gain))
    requant = requant_to(node, magnitude * x.scale / out.scale, out, acc_bound=x.span)
    return ConvOp(node.name, node.op, [x.name], out.name, weight=weight, bias=np.zeros(channels, np.int32),
                  group=channels, in_zp=x.zero_point, requant=requant)


def _positive_factor(nodes: list[gs.Node]) -> float:
    """The product of the positive scalars ``nodes`` multiply by (or divide by): attention's 1/√d, which
    a constant Add's multiplier takes in."""
    factor = 1.0
    for node in nodes:
        values = [constant_value(t) for t in node.inputs]
        index = next((i for i, v in enumerate(values) if v is not None and np.size(v) == 1), None)
        value = float(np.asarray(values[index]).reshape(())) if index is not None else 0.0
        if node.op not in ("Mul", "Div") or index is None or value <= 0 or (node.op == "Div" and index != 1):
            raise _fail(node, "before the Add of a constant tensor the integer program takes a Mul or Div "
                              "by a positive scalar only (it folds into the Add's multiplier)")
        factor *= value if node.op == "Mul" else 1.0 / value
    return factor


def lower_layernorm(ctx: Lowering, node: gs.Node) -> Op:
    """``LayerNormOp``: the fixed-point parameters for this input's scale, ε, γ, β and the output."""
    x = ctx.act(node, 0)
    axis = int(node.attrs.get("axis", -1)) % len(x.shape)
    if axis != len(x.shape) - 1:
        raise _fail(node, f"normalizes from axis {axis} of a {len(x.shape)}-D tensor; the integer program "
                          "normalizes the last axis only")
    n = int(x.shape[-1])
    gamma = np.broadcast_to(_real(ctx, node, 1), (n,)).astype(np.float64)
    has_beta = len(node.inputs) > 2 and bool(node.inputs[2].name)
    beta = np.broadcast_to(_real(ctx, node, 2), (n,)).astype(np.float64) if has_beta else np.zeros(n)
    out = ctx.output(node, x.shape)
    eps = float(node.attrs.get("epsilon", 1e-5))
    eps_term = round(n * n * eps / (x.scale * x.scale))
    spread = n * n * x.span * x.span + eps_term  # bounds length·S2 − S1² + eps_term
    d_max = 2 * n * x.span  # bounds |length·v − S1|
    root_shift = min((61 - spread.bit_length()) // 2, 62 - d_max.bit_length() - _FRAC_BITS)
    if root_shift < 0:
        raise _fail(node, f"a row of {n} values at {x.span} steps is too long for 64-bit integer sums")
    y_bits = _FRAC_BITS + ((n.bit_length() + 1) // 2) + 1  # |y| ≤ √length · 2^frac
    gains = gamma / out.scale
    top = float(np.abs(gains).max(initial=0.0))
    p = 40 if top == 0 else int(np.floor(np.log2(2.0 ** (60 - y_bits) / top)))
    shift = min(p + _FRAC_BITS, 62)
    if shift < 1:
        raise _fail(node, f"γ/s_out reaches {top:.3g}; the output scale is too fine for the fixed point")
    g = np.rint(gains * 2.0 ** (shift - _FRAC_BITS)).astype(np.int64)
    b = np.rint(np.clip(beta / out.scale * 2.0**shift, -(2.0**61), 2.0**61)).astype(np.int64)
    requant = Requant(np.ones(1, np.int64), np.array([shift], np.int64), out.zero_point, out.qmin, out.qmax)
    return LayerNormOp(node.name, node.op, [x.name], out.name, length=n, in_zp=x.zero_point,
                       eps_term=int(eps_term), root_shift=int(root_shift), frac_bits=_FRAC_BITS, gamma=g,
                       beta=b, requant=requant)


def _real(ctx: Lowering, node: gs.Node, index: int) -> np.ndarray:
    """A constant input's real values (float, or int8 behind a DQ)."""
    tensor = node.inputs[index]
    dq = tensor.inputs[0] if tensor.inputs else None
    if dq is not None and dq.op == "DequantizeLinear" and constant_value(dq.inputs[0]) is not None:
        return _dequantize(ctx, dq, np.asarray(constant_value(dq.inputs[0])))
    return ctx.constant(node, index).astype(np.float64)


def _dequantize(ctx: Lowering, dq: gs.Node, q: np.ndarray) -> np.ndarray:
    """A DQ of a constant, in float32 as ORT computes it."""
    scale = ctx.constant(dq, 1).astype(np.float32)
    zero_t = dq.inputs[2] if len(dq.inputs) > 2 and dq.inputs[2].name else None
    zero = np.asarray(constant_value(zero_t)) if zero_t is not None else np.zeros(1, np.int64)
    axis = int(dq.attrs.get("axis", 1))
    if scale.size > 1:
        view = [1] * q.ndim
        view[axis % q.ndim] = -1
        scale, zero = scale.reshape(view), zero.reshape(view)
    return ((q.astype(np.int64) - zero.astype(np.int64)).astype(np.float32) * scale).astype(np.float32)
