"""Random small ONNX graphs from the ops dsqc supports, as a hypothesis strategy.

A graph starts from one input (``x[N,C,H,W]`` or ``x[N,F]``) and grows a chain of 1–8 steps; a
step applies one op to the newest tensor, sometimes with a second operand (an earlier tensor of the
same shape or a constant), so residual Adds, Concats and side branches occur. The patterns the FP32
passes rewrite are drawn on purpose: Conv/Gemm/MatMul → BatchNormalization, Pad → Conv, a constant
Add after Conv/Gemm, Reshape/Transpose pairs, Identity/Dropout, constant subexpressions, dead nodes.
Weights come from a drawn seed, so a failing example replays exactly.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import onnx
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

Shape = tuple[int, ...]  # without the batch axis


@dataclass
class Graph:
    """A graph under construction: nodes, initializers and the shape of every tensor."""

    rng: np.random.Generator
    nodes: list[onnx.NodeProto] = field(default_factory=list)
    inits: list[onnx.TensorProto] = field(default_factory=list)
    shapes: dict[str, Shape] = field(default_factory=dict)
    ops: list[str] = field(default_factory=list)

    def const(self, array: np.ndarray, stem: str = "c") -> str:
        name = f"{stem}{len(self.inits)}"
        self.inits.append(numpy_helper.from_array(np.asarray(array), name))
        return name

    def weight(self, shape: Shape, scale: float = 0.4) -> str:
        return self.const(self.rng.normal(0, scale, shape).astype(np.float32), "w")

    def add(self, op: str, inputs: list[str], shape: Shape | None, **attrs: object) -> str:
        """A node; ``shape`` None for constant-only values (not activations: no batch axis)."""
        out = f"t{len(self.nodes)}"
        name = f"{op.lower()}_{len(self.nodes)}"
        self.nodes.append(helper.make_node(op, inputs, [out], name=name, **attrs))
        if shape is not None:
            self.shapes[out] = shape
        self.ops.append(op)
        return out

    def same_shape(self, x: str) -> list[str]:
        return [t for t, s in self.shapes.items() if s == self.shapes[x] and t != x]


def _conv(g: Graph, x: str, draw: Callable) -> str:
    c, h, w = g.shapes[x]
    k = draw(st.sampled_from([1, 3]))
    stride = draw(st.sampled_from([1, 2])) if min(h, w) >= 4 else 1
    depthwise = draw(st.booleans()) and c > 1
    out_c = c if depthwise else draw(st.integers(1, 8))
    pad = k // 2
    if draw(st.booleans()) and k == 3:  # explicit Pad → Conv(pads=0): FoldPadIntoConv
        pads = g.const(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), "pads")
        x = g.add("Pad", [x, pads], (c, h + 2, w + 2))
        pad, h, w = 0, h + 2, w + 2
    oh, ow = (h + 2 * pad - k) // stride + 1, (w + 2 * pad - k) // stride + 1
    group = c if depthwise else 1
    inputs = [x, g.weight((out_c, c // group, k, k))]
    if draw(st.booleans()):
        inputs.append(g.weight((out_c,), 0.1))
    return g.add("Conv", inputs, (out_c, oh, ow), kernel_shape=[k, k], strides=[stride, stride],
                 pads=[pad] * 4, group=group)


def _batchnorm(g: Graph, x: str, draw: Callable) -> str:
    c = g.shapes[x][0]
    params = [g.const(g.rng.uniform(0.5, 1.5, c).astype(np.float32)),
              g.const(g.rng.normal(0, 0.2, c).astype(np.float32)),
              g.const(g.rng.normal(0, 0.2, c).astype(np.float32)),
              g.const(g.rng.uniform(0.5, 2.0, c).astype(np.float32))]
    return g.add("BatchNormalization", [x, *params], g.shapes[x], epsilon=1e-5)


def _unary(op: str, **attrs: object) -> Callable[[Graph, str, Callable], str]:
    def make(g: Graph, x: str, draw: Callable) -> str:
        return g.add(op, [x], g.shapes[x], **attrs)
    return make


def _clip(g: Graph, x: str, draw: Callable) -> str:
    lo, hi = draw(st.sampled_from([(0.0, 6.0), (-1.0, 1.0), (0.0, 1.0)]))
    bounds = [g.const(np.array(lo, np.float32)), g.const(np.array(hi, np.float32))]
    return g.add("Clip", [x, *bounds], g.shapes[x])


def _pool(op: str) -> Callable[[Graph, str, Callable], str]:
    def make(g: Graph, x: str, draw: Callable) -> str:
        c, h, w = g.shapes[x]
        return g.add(op, [x], (c, h // 2, w // 2), kernel_shape=[2, 2], strides=[2, 2])
    return make


def _gap(g: Graph, x: str, draw: Callable) -> str:
    return g.add("GlobalAveragePool", [x], (g.shapes[x][0], 1, 1))


def _binary(op: str) -> Callable[[Graph, str, Callable], str]:
    """Add/Mul with an earlier tensor of the same shape, or a constant (per channel)."""
    def make(g: Graph, x: str, draw: Callable) -> str:
        shape = g.shapes[x]
        others = g.same_shape(x)
        if others and draw(st.booleans()):
            return g.add(op, [x, draw(st.sampled_from(sorted(others)))], shape)
        small = (shape[0], 1, 1) if len(shape) == 3 else (shape[0],)
        if op == "Mul":
            operand = g.const(g.rng.uniform(0.5, 1.5, small).astype(np.float32))
        elif draw(st.booleans()):  # a constant subexpression: FoldConstants
            operand = g.add("Add", [g.weight(small, 0.3), g.weight(small, 0.3)], None)
        else:
            operand = g.weight(small, 0.3)
        return g.add(op, [x, operand], shape)
    return make


def _concat(g: Graph, x: str, draw: Callable) -> str:
    others = g.same_shape(x)
    other = draw(st.sampled_from(sorted(others))) if others else x
    shape = g.shapes[x]
    return g.add("Concat", [x, other], (shape[0] * 2, *shape[1:]), axis=1)


def _transpose_pair(g: Graph, x: str, draw: Callable) -> str:
    c, h, w = g.shapes[x]
    t = g.add("Transpose", [x], (c, w, h), perm=[0, 1, 3, 2])
    return g.add("Transpose", [t], (c, h, w), perm=[0, 1, 3, 2]) if draw(st.booleans()) else t


def _flatten(g: Graph, x: str, draw: Callable) -> str:
    size = int(np.prod(g.shapes[x]))
    if draw(st.booleans()):
        return g.add("Flatten", [x], (size,), axis=1)
    return g.add("Reshape", [x, g.const(np.array([-1, size], np.int64), "shape")], (size,))


def _dense(g: Graph, x: str, draw: Callable) -> str:
    f = g.shapes[x][0]
    out_f = draw(st.integers(1, 12))
    if draw(st.booleans()):
        trans_b = draw(st.booleans())
        w = g.weight((out_f, f) if trans_b else (f, out_f))
        inputs = [x, w, g.weight((out_f,), 0.1)] if draw(st.booleans()) else [x, w]
        return g.add("Gemm", inputs, (out_f,), transB=int(trans_b))
    return g.add("MatMul", [x, g.weight((f, out_f))], (out_f,))


def _reshape_pair(g: Graph, x: str, draw: Callable) -> str:
    f = g.shapes[x][0]
    r = g.add("Reshape", [x, g.const(np.array([-1, 1, f], np.int64), "shape")], (1, f))
    return g.add("Reshape", [r, g.const(np.array([-1, f], np.int64), "shape")], (f,))


IMAGE_OPS: dict[str, Callable[[Graph, str, Callable], str]] = {
    "Conv": _conv, "BatchNormalization": _batchnorm, "Relu": _unary("Relu"), "Clip": _clip,
    "Sigmoid": _unary("Sigmoid"), "MaxPool": _pool("MaxPool"), "AveragePool": _pool("AveragePool"),
    "GlobalAveragePool": _gap, "Add": _binary("Add"), "Mul": _binary("Mul"), "Concat": _concat,
    "Transpose": _transpose_pair, "Identity": _unary("Identity"), "Dropout": _unary("Dropout"),
    "Flatten": _flatten,
}
VECTOR_OPS: dict[str, Callable[[Graph, str, Callable], str]] = {
    "Gemm": _dense, "BatchNormalization": _batchnorm, "Relu": _unary("Relu"), "Clip": _clip,
    "Sigmoid": _unary("Sigmoid"), "Add": _binary("Add"), "Mul": _binary("Mul"), "Concat": _concat,
    "Reshape": _reshape_pair, "Identity": _unary("Identity"),
}

WEIGHT = {"Conv": 5, "Gemm": 4, "BatchNormalization": 2}  # compute ops and their fusions come often


@dataclass(frozen=True)
class Case:
    """One drawn graph: the model, its ops in order, and a feed factory."""

    model: onnx.ModelProto
    ops: tuple[str, ...]
    input_shape: Shape

    def feeds(self, n: int, seed: int = 0) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(seed)
        return {"x": rng.normal(0, 1, (n, *self.input_shape)).astype(np.float32)}


COMPUTE_OPS = {"Conv", "Gemm", "MatMul"}


@st.composite
def graphs(draw: Callable, max_steps: int = 8, compute: bool = True) -> Case:
    """A valid, shape-inferred model of 1..max_steps op steps; ``compute=False``: no Conv/Gemm/MatMul."""
    g = Graph(np.random.default_rng(draw(st.integers(0, 2**32 - 1))))
    if draw(st.booleans()):
        shape: Shape = (draw(st.integers(1, 6)), draw(st.integers(2, 10)), draw(st.integers(2, 10)))
    else:
        shape = (draw(st.integers(1, 16)),)
    g.shapes["x"] = shape
    x = "x"
    for _ in range(draw(st.integers(1, max_steps))):
        table = IMAGE_OPS if len(g.shapes[x]) == 3 else VECTOR_OPS
        names = [n for n in table for _ in range(WEIGHT.get(n, 1))
                 if _applicable(n, g.shapes[x]) and (compute or n not in COMPUTE_OPS)]
        x = table[draw(st.sampled_from(names))](g, x, draw)
    outputs = [x]
    if draw(st.booleans()):  # a second output from the middle of the graph
        middle = draw(st.sampled_from(sorted(g.shapes)))
        if middle not in (x, "x"):
            outputs.append(middle)
    if draw(st.booleans()):  # a dead node: EliminateDeadCode
        g.add("Relu", ["x"], shape)
    return Case(_model(g, shape, outputs), tuple(g.ops), shape)


def _applicable(op: str, shape: Shape) -> bool:
    if op in ("MaxPool", "AveragePool"):
        return min(shape[1:]) >= 2
    if op == "Concat":
        return shape[0] <= 32
    return True


def _model(g: Graph, shape: Shape, outputs: list[str]) -> onnx.ModelProto:
    def info(name: str, dims: Shape) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, TensorProto.FLOAT, ["N", *dims])

    graph = helper.make_graph(g.nodes, "fuzz", [info("x", shape)], [info(o, g.shapes[o]) for o in outputs],
                              g.inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    onnx.checker.check_model(model, full_check=True)
    return model
