"""SmoothQuant (Xiao et al. 2023): move activation outliers into the weights of MatMul/Gemm layers."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model, constant_value, is_graph_output, make_constant, producer, set_constant_input
from dsqc.op_kinds import MATRIX_OPS, weight_reduction_axis
from dsqc.pass_infra import Pass, PassResult

log = logging.getLogger(__name__)
SUFFIX = "_smoothed"
_SCALE_LIMITS = (1e-4, 1e4)


def weight_of(node: gs.Node) -> tuple[np.ndarray, int] | None:
    """``(W, k_axis)`` for ``X @ W`` (MatMul) or Gemm with transA = 0 and a constant 2-D weight."""
    if node.op not in MATRIX_OPS or node.domain not in (None, "", "ai.onnx") or len(node.inputs) < 2:
        return None
    if node.op == "Gemm" and int(node.attrs.get("transA", 0)):
        return None
    weight = constant_value(node.inputs[1])
    if weight is None or weight.ndim != 2 or not np.issubdtype(weight.dtype, np.floating):
        return None
    return weight, weight_reduction_axis(node)


def smoothable_readers(tensor: gs.Tensor) -> list[gs.Node]:
    """Readers of ``tensor`` that take it as their activation input and own a constant weight."""
    readers = []
    for node in tensor.outputs:
        found = weight_of(node)
        if found is not None and node.inputs[0] is tensor and node.inputs[1] is not tensor \
                and len(node.inputs[1].outputs) == 1:
            readers.append(node)
    return readers


def targets(graph: gs.Graph) -> list[str]:
    """Activation tensors SmoothQuant can act on (their per-channel absmax along the last axis is needed)."""
    names = []
    for name, tensor in graph.tensors().items():
        if isinstance(tensor, gs.Variable) and not name.endswith(SUFFIX) and smoothable_readers(tensor):
            names.append(name)
    return sorted(names)


@dataclass(frozen=True)
class _Fold:
    """A producer whose per-channel constants absorb ``1/s`` exactly: LayerNorm gamma/beta, a Mul by a
    per-channel constant (RMSNorm's weight)."""

    node: gs.Node
    slots: tuple[int, ...]


def _fold_target(graph: gs.Graph, tensor: gs.Tensor, readers: list[gs.Node], channels: int) -> _Fold | None:
    node = producer(tensor)
    if node is None or is_graph_output(graph, tensor) or len(readers) != len(tensor.outputs):
        return None
    last_axis = (-1, len(tensor.shape or []) - 1)
    if node.op == "LayerNormalization" and int(node.attrs.get("axis", -1)) in last_axis:
        slots = tuple(i for i in (1, 2) if len(node.inputs) > i and node.inputs[i].name)
    elif node.op == "Mul":
        slots = tuple(i for i, t in enumerate(node.inputs) if constant_value(t) is not None)
        if len(slots) != 1:
            return None
    else:
        return None
    for i in slots:
        value = constant_value(node.inputs[i])
        if value is None or value.size != channels or value.shape[-1] != channels \
                or len(node.inputs[i].outputs) != 1:
            return None
    return _Fold(node, slots)


def smoothing_scales(absmax: np.ndarray, weights: list[tuple[np.ndarray, int]], alpha: float) -> np.ndarray:
    """``s_j = max|X_j|^α / max|W_j|^(1-α)`` over all readers' weights; 1 where either is 0."""
    w_max = np.max([np.abs(w.astype(np.float64)).max(axis=1 - k) for w, k in weights], axis=0)
    x_max = np.asarray(absmax, np.float64)
    scale = np.ones_like(w_max)
    ok = (x_max > 0) & (w_max > 0)
    scale[ok] = x_max[ok] ** alpha / w_max[ok] ** (1.0 - alpha)
    return np.clip(scale, *_SCALE_LIMITS)


def _scale_weight(graph: gs.Graph, node: gs.Node, scale: np.ndarray) -> None:
    found = weight_of(node)
    assert found is not None
    weight, k_axis = found
    shape = (-1, 1) if k_axis == 0 else (1, -1)
    new = (weight.astype(np.float64) * scale.reshape(shape)).astype(weight.dtype)
    set_constant_input(graph, node, 1, new, f"{node.name}_weight")


class SmoothQuant(Pass):
    """For each activation X read by MatMul/Gemm layers with constant weights, ``X' = X / s`` and
    ``W' = diag(s) W`` per input channel j, with ``s_j = max|X_j|^α / max|W_j|^(1-α)`` (``act_absmax``:
    per-channel absmax of X along its last axis from calibration; W: all of X's such readers).

    ``1/s`` folds exactly into the producer's per-channel constants when X is read by these layers
    only: a LayerNormalization's gamma and beta, or a Mul by a per-channel constant (RMSNorm's
    weight). Otherwise a ``Mul(X, 1/s)`` feeds those readers (other readers keep X). The smoothed
    tensor is named ``<X>_smoothed``; tensors with that suffix or without statistics are left
    alone, so a second run changes nothing.
    """

    cleanup_after = True  # the context cleans up and sorts after a change

    def __init__(self, alpha: float = 0.5, act_absmax: Mapping[str, np.ndarray] | None = None) -> None:
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"SmoothQuant alpha must be in [0, 1], got {alpha}")
        self.alpha = alpha
        self.act_absmax = dict(act_absmax or {})

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        modified = False
        for name in targets(graph):
            tensor = graph.tensors()[name]
            readers = smoothable_readers(tensor)
            absmax = self.act_absmax.get(name)
            weights = [w for w in (weight_of(r) for r in readers) if w is not None]
            channels = weights[0][0].shape[weights[0][1]]
            if absmax is None or np.asarray(absmax).shape != (channels,) or \
                    any(w.shape[k] != channels for w, k in weights):
                log.debug("%s: skip %s: no per-channel statistics of %d channels", self.name, name, channels)
                continue
            scale = smoothing_scales(absmax, weights, self.alpha)
            self._rewrite(graph, tensor, readers, scale)
            modified = True
        return PassResult(model, modified)

    def _rewrite(self, graph: gs.Graph, tensor: gs.Tensor, readers: list[gs.Node], scale: np.ndarray) -> None:
        for reader in readers:
            _scale_weight(graph, reader, scale)
        fold = _fold_target(graph, tensor, readers, scale.size)
        if fold is not None:
            for i in fold.slots:
                value = np.asarray(constant_value(fold.node.inputs[i]))
                new = (value.astype(np.float64) / scale.reshape(value.shape)).astype(value.dtype)
                set_constant_input(graph, fold.node, i, new, f"{fold.node.name}_smoothed")
            tensor.name = f"{tensor.name}{SUFFIX}"
            log.debug("%s: folded 1/s into %s %s", self.name, fold.node.op, fold.node.name)
            return
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
        inv = make_constant(graph, f"{tensor.name}_smooth_scale", (1.0 / scale).astype(dtype))
        out = gs.Variable(f"{tensor.name}{SUFFIX}", dtype, tensor.shape)
        graph.nodes.append(gs.Node("Mul", f"{tensor.name}_SmoothQuant", inputs=[tensor, inv], outputs=[out]))
        for reader in readers:
            reader.inputs[0] = out
        log.debug("%s: Mul(1/s) inserted before %d readers of %s", self.name, len(readers), tensor.name)
