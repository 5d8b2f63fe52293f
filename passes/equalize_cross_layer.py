"""Cross-layer equalization (Nagel et al. 2019, "Data-Free Quantization"): balance the weight ranges
of Conv → activation → Conv chains so that per-tensor (and per-channel) quantization loses less."""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model, constant_value, only_consumer, producer, set_constant_input
from dsqc.op_kinds import input_channels, output_channels
from dsqc.pass_infra import Pass, PassResult

log = logging.getLogger(__name__)

# f(s·x) = s·f(x) for s > 0, elementwise: a per-channel scale moves through them exactly.
HOMOGENEOUS = ("Relu", "LeakyRelu", "PRelu")
_DEFAULT_DOMAINS = (None, "", "ai.onnx")


@dataclass
class _Pair:
    """``first`` → ``act`` (or nothing) → ``second``; ``bound`` is the Clip's upper bound (else inf)."""

    first: gs.Node
    act: gs.Node | None
    second: gs.Node
    bound: float = np.inf


def _clip_range(node: gs.Node) -> tuple[float, float] | None:
    """(lo, hi) of a Clip with constant bounds, else ``None``."""
    if "min" in node.attrs or "max" in node.attrs:
        return float(node.attrs.get("min", -np.inf)), float(node.attrs.get("max", np.inf))
    bounds = []
    for i, default in ((1, -np.inf), (2, np.inf)):
        if len(node.inputs) <= i or not node.inputs[i].name:
            bounds.append(default)
            continue
        value = constant_value(node.inputs[i])
        if value is None:
            return None
        bounds.append(float(value))
    return bounds[0], bounds[1]


def _weight_refusal(node: gs.Node, role: str) -> str | None:
    if node.op != "Conv" or node.domain not in _DEFAULT_DOMAINS:
        return f"{role} {node.name} is {node.op}, not Conv"
    weight = node.inputs[1]
    value = constant_value(weight)
    if value is None or value.ndim < 3 or not np.issubdtype(value.dtype, np.floating):
        return f"weight of {node.name} is not a constant float tensor"
    if len(weight.outputs) != 1:
        return f"weight {weight.name} of {node.name} is shared with another node"
    if len(node.inputs) > 2 and node.inputs[2].name:
        bias = node.inputs[2]
        if constant_value(bias) is None or len(bias.outputs) != 1:
            return f"bias of {node.name} is not a constant read by it alone"
    return None


def pair_refusal(graph: gs.Graph, second: gs.Node) -> _Pair | str:
    """The chain ending in Conv ``second``, or why it cannot be equalized exactly."""
    reason = _weight_refusal(second, "consumer")
    if reason:
        return reason
    x = second.inputs[0]
    node = producer(x)
    if node is None:
        return f"{x.name} is a graph input"
    if not only_consumer(graph, x, second):
        return f"{x.name} fans out to other readers or is a graph output"
    act: gs.Node | None = None
    bound = np.inf
    if node.op != "Conv":
        act = node
        if act.op == "Clip":
            clip = _clip_range(act)
            if clip is None or clip[0] != 0.0:
                return f"Clip {act.name}: bounds not constant or lower bound ≠ 0: not positively homogeneous"
            bound = clip[1]
        elif act.op not in HOMOGENEOUS:
            return f"{act.op} {act.name} is not positively homogeneous (f(s·x) ≠ s·f(x))"
        if act.op == "PRelu" and constant_value(act.inputs[1]) is None:
            return f"PRelu {act.name} has a non-constant slope"
        node = producer(act.inputs[0])
        if node is None or not only_consumer(graph, act.inputs[0], act):
            return f"input of {act.name} is a graph input, fans out or is a graph output"
    reason = _weight_refusal(node, "producer")
    if reason:
        return reason
    w1, w2 = constant_value(node.inputs[1]), constant_value(second.inputs[1])
    assert w1 is not None and w2 is not None
    if output_channels(node, w1.shape) != input_channels(second, w2.shape):
        return f"{node.name} has {w1.shape[0]} output channels, {second.name} reads another count"
    return _Pair(node, act, second, bound)


def _second_view(w2: np.ndarray, groups: int) -> np.ndarray:
    """``w2`` as ``[groups, out/group, in/group, k...]``: input channel c = g·(in/group) + j."""
    return w2.reshape(groups, w2.shape[0] // groups, *w2.shape[1:])


def _input_range(node: gs.Node) -> tuple[float, float] | None:
    """A static range of ``node``'s data input when a Clip with finite bounds produces it."""
    src = producer(node.inputs[0])
    if src is None or src.op != "Clip":
        return None
    clip = _clip_range(src)
    return clip if clip is not None and np.isfinite(clip).all() else None


def _upper_bound(node: gs.Node, w1: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Per output channel, the largest pre-activation ``node`` can produce (inf if unknown).

    Zero padding stays inside the input range, since every range used here contains 0.
    """
    rng = _input_range(node)
    if rng is None or not rng[0] <= 0.0 <= rng[1]:
        return np.full(w1.shape[0], np.inf)
    flat = w1.reshape(w1.shape[0], -1).astype(np.float64)
    return bias + np.maximum(flat * rng[0], flat * rng[1]).sum(axis=1)


def equalization_scales(pair: _Pair) -> np.ndarray:
    """``s = sqrt(r1 / r2)`` per channel, limited so a Clip's upper bound is provably never reached."""
    w1 = np.asarray(constant_value(pair.first.inputs[1]), np.float64)
    w2 = np.asarray(constant_value(pair.second.inputs[1]), np.float64)
    groups = int(pair.second.attrs.get("group", 1))
    r1 = np.abs(w1.reshape(w1.shape[0], -1)).max(axis=1)
    view = np.abs(_second_view(w2, groups))
    r2 = np.moveaxis(view, 2, 1).reshape(groups, view.shape[2], -1).max(axis=2).reshape(-1)
    scale = np.ones_like(r1)
    ok = (r1 > 0) & (r2 > 0)
    scale[ok] = np.sqrt(r1[ok] / r2[ok])
    if np.isfinite(pair.bound):
        upper = _upper_bound(pair.first, w1, _bias(pair.first, w1.shape[0]))
        never_clipped = upper <= pair.bound
        scale = np.where(never_clipped, np.maximum(scale, upper / pair.bound), 1.0)
    return scale


def _bias(node: gs.Node, channels: int) -> np.ndarray:
    if len(node.inputs) > 2 and node.inputs[2].name:
        return np.asarray(constant_value(node.inputs[2]), np.float64)
    return np.zeros(channels)


def _apply(graph: gs.Graph, pair: _Pair, scale: np.ndarray) -> None:
    w1 = np.asarray(constant_value(pair.first.inputs[1]))
    w2 = np.asarray(constant_value(pair.second.inputs[1]))
    shape1 = (-1,) + (1,) * (w1.ndim - 1)
    new_w1 = (w1.astype(np.float64) / scale.reshape(shape1)).astype(w1.dtype)
    set_constant_input(graph, pair.first, 1, new_w1, f"{pair.first.name}_weight")
    if len(pair.first.inputs) > 2 and pair.first.inputs[2].name:
        bias = _bias(pair.first, w1.shape[0])
        set_constant_input(graph, pair.first, 2, (bias / scale).astype(w1.dtype), f"{pair.first.name}_bias")
    groups = int(pair.second.attrs.get("group", 1))
    view = _second_view(w2.astype(np.float64), groups)
    factor = scale.reshape(groups, 1, view.shape[2], *([1] * (view.ndim - 3)))
    set_constant_input(graph, pair.second, 1, (view * factor).reshape(w2.shape).astype(w2.dtype),
                       f"{pair.second.name}_weight")


class EqualizeCrossLayer(Pass):
    """Scale output channel i of Conv₁ by 1/sᵢ and the matching input channel of Conv₂ by sᵢ, with
    ``sᵢ = sqrt(r1ᵢ / r2ᵢ)`` (r = max |w| of the channel), through Relu, LeakyRelu, PRelu or no
    activation — exact, since f(x/s)·s = f(x) for these. Depthwise and grouped Convs are handled on
    either side. Sweeps all chains until no scale moves by more than ``tolerance`` (DFQ's iteration
    for Conv₁→Conv₂→Conv₃), so a second run changes nothing.

    Clip(0, b) (ReLU6) saturates, so scaling moves its bound: a channel is scaled only when interval
    arithmetic over Conv₁'s weights and a bounded input (a preceding Clip) proves its pre-activation
    never exceeds b before or after scaling; the other channels keep s = 1. Refused (reason at DEBUG):
    other activations (Sigmoid, SiLU's Mul, HardSwish, Gelu, Tanh: not positively homogeneous), a
    Clip with a lower bound ≠ 0, fan-out or graph outputs between the Convs, shared or non-constant
    weights or biases, channel counts that disagree.
    """

    def __init__(self, tolerance: float = 1e-4, max_sweeps: int = 200) -> None:
        self.tolerance = tolerance
        self.max_sweeps = max_sweeps

    def pairs(self, graph: gs.Graph) -> list[_Pair]:
        found: list[_Pair] = []
        for node in graph.nodes:
            if node.op != "Conv":
                continue
            pair = pair_refusal(graph, node)
            if isinstance(pair, str):
                log.debug("%s: skip %s: %s", self.name, node.name, pair)
            else:
                found.append(pair)
        return found

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        pairs = self.pairs(graph)
        modified = False
        for sweep in range(self.max_sweeps):
            moved = False
            for pair in pairs:
                scale = equalization_scales(pair)
                if np.max(np.abs(scale - 1.0)) > self.tolerance:
                    _apply(graph, pair, scale)
                    moved = True
            modified |= moved
            if not moved:
                log.debug("%s: %d chains converged after %d sweeps", self.name, len(pairs), sweep)
                break
        else:
            log.warning("%s: not converged after %d sweeps", self.name, self.max_sweeps)
        return PassResult(model, modified)
