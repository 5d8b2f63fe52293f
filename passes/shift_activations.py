"""Shift one-signed MatMul/Gemm inputs to zero-centred ranges, so symmetric int8 keeps all 8 bits.

A GELU output spans about ``[-0.17, 6]``. Symmetric int8 (TensorRT's only activation scheme) must
cover ``[-6, 6]`` and wastes half its levels; an asymmetric zero point would not. This pass does
the zero point's job in float, before calibration: ``X' = X - m`` with ``m = (min + max) / 2`` feeds
the layers, and each layer's bias absorbs ``m · Σ_k W[k, :]``, so ``X' @ W + b' = X @ W + b``
(exact up to float rounding). The quantizer then sees ``[-3.1, 3.1]``: the step halves (+6 dB on
that tensor). In TensorRT the ``Sub`` is a pointwise op fused with its producer and the Q, the bias
with the GEMM. Outlier Suppression+ (Wei et al. 2023) shifts per channel; one shift per tensor is
enough for the one-signed case and keeps the bias fold exact for every reader.

The float fold is exact for float weights. Once a layer's weight is quantized, ``X' @ W_q + m·Σ W`` is
off by ``m · Σ_k (W_q - W)`` per output channel: where the bulk of X sits near 0 and a few outliers set
the range (MiniLM's GELU outputs: m = 12, K = 1536), X' sits near -m and that term swamps the output
(-2 dB). ``shift_corrections`` gives BiasCorrection what it needs to fold ``m · Σ_k W_q`` instead,
after Q/DQ insertion (``compiler/quant/quantize.py``): the shifted layer then carries exactly the weight
error of the unshifted one, and only the activation rounding gets finer.

Only readers with a constant 2-D weight (``smoothable_readers``) are shifted; a tensor is shifted when
its symmetric range is at least ``min_gain`` times its centred half-range (1 %: a LayerNorm output in
[-6.1, 6.3] already gains 0.14 dB, and the Sub costs TensorRT nothing: it fuses with its producer).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model, constant_value, make_constant, producer, set_constant_input
from dsqc.pass_infra import Pass, PassResult

from .smooth_quant import smoothable_readers, weight_of

log = logging.getLogger(__name__)
SUFFIX = "_shifted"


def shift_targets(graph: gs.Graph) -> list[str]:
    """Activation tensors read as the input of MatMul/Gemm layers with a constant weight."""
    return sorted(name for name, t in graph.tensors().items()
                  if isinstance(t, gs.Variable) and not name.endswith(SUFFIX) and smoothable_readers(t))


def shift_gain(lo: float, hi: float) -> float:
    """How many times finer the int8 step gets when ``[lo, hi]`` is centred: ``max|x| / ((hi - lo) / 2)``."""
    half = (hi - lo) / 2.0
    return max(abs(lo), abs(hi)) / half if half > 0 else 1.0


class ShiftActivations(Pass):
    """``X' = X - m`` for the MatMul/Gemm readers of each one-signed ``X`` (``ranges``: calibrated
    ``(min, max)``), their biases corrected by ``m · Σ_k W``. Shifted tensors are named ``<X>_shifted``;
    tensors with that suffix or without a range are left alone, so a second run changes nothing.
    """

    cleanup_after = True  # the context cleans up and sorts after a change

    def __init__(self, ranges: Mapping[str, tuple[float, float]] | None = None,
                 min_gain: float = 1.01) -> None:
        self.ranges = dict(ranges or {})
        self.min_gain = min_gain
        self.shifted: dict[str, float] = {}

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        self.shifted = {}
        for name in shift_targets(graph):
            if name not in self.ranges:
                continue
            lo, hi = self.ranges[name]
            if not (np.isfinite(lo) and np.isfinite(hi)) or shift_gain(lo, hi) < self.min_gain:
                continue
            tensor = graph.tensors()[name]
            shift = np.float32((lo + hi) / 2.0)
            self._rewrite(graph, tensor, smoothable_readers(tensor), shift)
            self.shifted[name] = float(shift)
            log.debug("%s: %s shifted by %g (int8 step %.2fx finer)", self.name, name, shift,
                      shift_gain(lo, hi))
        return PassResult(model, bool(self.shifted))

    def _rewrite(self, graph: gs.Graph, tensor: gs.Tensor, readers: list[gs.Node], shift: np.float32) -> None:
        dtype = np.dtype(tensor.dtype) if tensor.dtype is not None else np.dtype(np.float32)
        m = make_constant(graph, f"{tensor.name}_shift", np.asarray(shift, dtype=dtype))
        out = gs.Variable(f"{tensor.name}{SUFFIX}", dtype, tensor.shape)
        graph.nodes.append(gs.Node("Sub", f"{tensor.name}_Shift", inputs=[tensor, m], outputs=[out]))
        for reader in readers:
            found = weight_of(reader)
            assert found is not None
            weight, k_axis = found
            correction = (float(shift) * weight.astype(np.float64).sum(axis=k_axis)).astype(weight.dtype)
            reader.inputs[0] = out
            if reader.op == "Gemm":
                _gemm_bias(graph, reader, correction)
            else:
                _matmul_bias(graph, reader, correction)


def _gemm_bias(graph: gs.Graph, node: gs.Node, correction: np.ndarray) -> None:
    """``alpha · A B + beta · C``: C gains ``alpha / beta · correction`` (a new C if there is none)."""
    alpha, beta = float(node.attrs.get("alpha", 1.0)), float(node.attrs.get("beta", 1.0))
    bias = constant_value(node.inputs[2]) if len(node.inputs) > 2 and node.inputs[2].name else None
    if bias is None or beta == 0.0:
        if len(node.inputs) > 2 and node.inputs[2].name:  # a variable C: add the correction after the Gemm
            _add_after(graph, node, (alpha * correction).astype(correction.dtype))
            return
        node.attrs["beta"] = 1.0
        set_constant_input(graph, node, 2, (alpha * correction).astype(correction.dtype), f"{node.name}_bias")
        return
    new = (bias.astype(np.float64) + alpha / beta * correction).astype(bias.dtype)
    set_constant_input(graph, node, 2, new, f"{node.name}_bias")


def _matmul_bias(graph: gs.Graph, node: gs.Node, correction: np.ndarray) -> None:
    """The bias Add right after the MatMul absorbs the correction; without one, an Add is inserted."""
    out = node.outputs[0]
    readers = list(out.outputs)
    if len(readers) == 1 and readers[0].op == "Add" and out not in graph.outputs:
        add = readers[0]
        slot = 1 if add.inputs[0] is out else 0
        bias = constant_value(add.inputs[slot])
        if bias is not None and bias.shape == correction.shape:
            new = (bias.astype(np.float64) + correction).astype(bias.dtype)
            set_constant_input(graph, add, slot, new, f"{add.name}_bias")
            return
    _add_after(graph, node, correction)


def _add_after(graph: gs.Graph, node: gs.Node, correction: np.ndarray) -> None:
    """Insert ``Add(node's output, correction)``; the Add takes over the output's name and readers."""
    out = node.outputs[0]
    raw = gs.Variable(f"{out.name}_unshifted", out.dtype, out.shape)
    node.outputs[0] = raw
    const = make_constant(graph, f"{node.name}_shift_bias", correction)
    graph.nodes.append(gs.Node("Add", f"{node.name}_ShiftBias", inputs=[raw, const], outputs=[out]))


def shift_corrections(graph: gs.Graph) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """For every layer that reads a shifted tensor: its float weight, and the constant input "mean"
    ``-m`` for which BiasCorrection adds ``m · Σ_k (W - W_q)``, the fold's error once W is quantized."""
    weights: dict[str, np.ndarray] = {}
    means: dict[str, np.ndarray] = {}
    for node in graph.nodes:
        if node.op != "Sub" or not node.outputs[0].name.endswith(SUFFIX):
            continue
        shift = constant_value(node.inputs[1])
        if shift is None or shift.size != 1:
            continue
        for reader in node.outputs[0].outputs:
            found = weight_of(reader)
            if found is not None and reader.inputs[0] is node.outputs[0]:
                weight, k_axis = found
                weights[reader.name] = weight
                means[reader.name] = np.full(weight.shape[k_axis], -float(shift.reshape(())), np.float64)
    return weights, means


def unshifted(graph: gs.Graph, name: str) -> str:
    """The tensor a shifted tensor was made from (``name`` itself when it was not shifted)."""
    tensor = graph.tensors().get(name)
    node = producer(tensor) if tensor is not None and name.endswith(SUFFIX) else None
    return node.inputs[0].name if node is not None and node.op == "Sub" else name
