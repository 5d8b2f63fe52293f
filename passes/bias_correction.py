"""Bias correction (Nagel et al. 2019): cancel the mean output shift that weight rounding causes."""

from __future__ import annotations

import logging
from collections.abc import Mapping

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model, constant_value, producer
from dsqc.op_kinds import QDQ_OPS, weight_reduction_axis
from dsqc.pass_infra import Pass, PassResult

log = logging.getLogger(__name__)
COMPUTE = ("Conv", "Gemm", "MatMul")
_INT32 = (np.iinfo(np.int32).min, np.iinfo(np.int32).max)
MARK = "dsqc.bias_correction"  # model metadata: set once applied, so a second run changes nothing


def dequantize_constant(dq: gs.Node) -> np.ndarray | None:
    """The float value a DequantizeLinear of constants produces (per tensor, per axis or blockwise)."""
    if dq.op != "DequantizeLinear":
        return None
    values = [constant_value(t) if t.name else None for t in dq.inputs[:3]]
    q, scale = values[0], values[1]
    if q is None or scale is None:
        return None
    zero = values[2] if len(values) > 2 and values[2] is not None else np.zeros_like(scale)
    x = q.astype(np.float64) - _expand(zero.astype(np.float64), q, dq)
    return x * _expand(scale.astype(np.float64), q, dq)


def _expand(param: np.ndarray, q: np.ndarray, dq: gs.Node) -> np.ndarray:
    if param.ndim == 0:
        return param
    axis = int(dq.attrs.get("axis", 1)) % q.ndim
    block = int(dq.attrs.get("block_size", 0))
    if block:
        return np.repeat(param, block, axis=axis)[tuple(slice(0, d) for d in q.shape)]
    shape = [1] * q.ndim
    shape[axis] = param.size
    return param.reshape(shape)


def float_input(node: gs.Node) -> gs.Tensor:
    """The float tensor behind ``node``'s data input: through a DequantizeLinear ← QuantizeLinear pair."""
    tensor = node.inputs[0]
    dq = producer(tensor)
    if dq is not None and dq.op == "DequantizeLinear":
        q = producer(dq.inputs[0])
        if q is not None and q.op == "QuantizeLinear":
            return q.inputs[0]
    return tensor


def output_shift(node: gs.Node, delta_w: np.ndarray, mean: np.ndarray) -> np.ndarray | None:
    """``E[ΔW · x]`` per output channel from the input's per-channel mean (padding ignored)."""
    if node.op == "Conv":
        groups = int(node.attrs.get("group", 1))
        out, per_group = delta_w.shape[0], delta_w.shape[1]
        if mean.size != per_group * groups:
            return None
        summed = delta_w.reshape(out, per_group, -1).sum(axis=2).reshape(groups, out // groups, per_group)
        return (summed @ mean.reshape(groups, per_group, 1)).reshape(out)
    if node.op == "Gemm":
        if int(node.attrs.get("transA", 0)):
            return None
        w = delta_w.T if weight_reduction_axis(node) == 1 else delta_w
        return None if w.shape[0] != mean.size else float(node.attrs.get("alpha", 1.0)) * (mean @ w)
    if delta_w.ndim != 2 or delta_w.shape[0] != mean.size:
        return None
    return mean @ delta_w


def _matmul_bias(node: gs.Node) -> tuple[gs.Node, int] | None:
    """The Add that adds a constant bias to MatMul's output (through one Q/DQ pair), and its slot."""
    tensor = node.outputs[0]
    for _ in range(3):
        if len(tensor.outputs) != 1:
            return None
        reader = tensor.outputs[0]
        if reader.op in QDQ_OPS:
            tensor = reader.outputs[0]
            continue
        if reader.op != "Add":
            return None
        slots = [i for i, t in enumerate(reader.inputs) if constant_value(t) is not None]
        return (reader, slots[0]) if len(slots) == 1 else None
    return None


class BiasCorrection(Pass):
    """For Conv/Gemm/MatMul whose weight is a DequantizeLinear of int8/int4 constants, add
    ``ΔW · E[x]`` to the bias per output channel, ``ΔW = W_fp32 − dequantize(W_q)``, so that the
    quantized layer's mean output matches FP32 (``float_weights`` and ``input_means``, keyed by node
    name, come from the FP32 model and calibration data). An int32 bias behind a DequantizeLinear is
    requantized with its own scale; a float bias (Conv/Gemm input, or MatMul → Add) is updated in
    place. Nodes without a bias, or whose bias is shared, are left alone (reason at DEBUG). The model's
metadata records the correction under ``mark``; a model that has it is not corrected twice.
    """

    def __init__(self, float_weights: Mapping[str, np.ndarray],
                 input_means: Mapping[str, np.ndarray], mark: str = MARK) -> None:
        self.float_weights = dict(float_weights)
        self.input_means = dict(input_means)
        self.mark = mark
        self.corrected: dict[str, float] = {}
        self.bias_shifts: dict[str, np.ndarray] = {}  # node → ΔW · E[x] added to its own int32 bias

    def call(self, model: Model) -> PassResult:
        if self.mark in model.metadata:
            log.debug("%s: already applied to this model", self.name)
            return PassResult(model, False)
        modified = False
        for node in model.graph.nodes:
            known = node.name in self.float_weights and node.name in self.input_means
            if node.op not in COMPUTE or not known:
                continue
            reason = self._correct(node)
            if reason:
                log.debug("%s: skip %s: %s", self.name, node.name, reason)
            else:
                modified = True
        if modified:
            model.metadata[self.mark] = f"{len(self.corrected)} biases corrected"
        return PassResult(model, modified)

    def _correct(self, node: gs.Node) -> str | None:
        dq = producer(node.inputs[1]) if len(node.inputs) > 1 else None
        w_q = dequantize_constant(dq) if dq is not None else None
        w_fp = np.asarray(self.float_weights[node.name], np.float64)
        if w_q is None or w_q.shape != w_fp.shape:
            return "weight is not a DequantizeLinear of constants shaped like the FP32 weight"
        shift = output_shift(node, w_fp - w_q, np.asarray(self.input_means[node.name], np.float64))
        if shift is None:
            return "input mean does not match the weight's input channels"
        if node.op == "MatMul":
            found = _matmul_bias(node)
            if found is None:
                return "MatMul output goes to no Add with a constant bias"
            target, slot = found
        elif len(node.inputs) > 2 and node.inputs[2].name:
            target, slot = node, 2
            if node.op == "Gemm":
                shift = shift / float(node.attrs.get("beta", 1.0))
        else:
            return "no bias to correct"
        reason = _add_to_bias(target, slot, shift)
        if reason is None:
            self.corrected[node.name] = float(np.max(np.abs(shift)))
            if target is node and producer(node.inputs[slot]) is not None:
                self.bias_shifts[node.name] = shift
        return reason


def corrected_integers(old: np.ndarray, scale: np.ndarray, shift: np.ndarray) -> np.ndarray:
    """The int32 bias on ``scale``'s grid holding ``old + shift`` (``old``: the dequantized bias)."""
    values = np.round((old.reshape(-1) + shift) / np.broadcast_to(scale, shift.shape))
    return np.clip(values, *_INT32).astype(np.int32)


def _add_to_bias(node: gs.Node, slot: int, shift: np.ndarray) -> str | None:
    tensor = node.inputs[slot]
    dq = producer(tensor)
    if dq is not None and dq.op == "DequantizeLinear":
        stored, scale = dq.inputs[0], constant_value(dq.inputs[1])
        old = dequantize_constant(dq)
        if not isinstance(stored, gs.Constant) or scale is None or old is None or len(stored.outputs) != 1 \
                or len(tensor.outputs) != 1 or old.size != shift.size:
            return "int32 bias is shared or not a constant DequantizeLinear"
        stored.values = corrected_integers(old, scale, shift).reshape(stored.shape)
        return None
    if not isinstance(tensor, gs.Constant) or len(tensor.outputs) != 1:
        return "bias is not a constant read by this node alone"
    bias = np.asarray(tensor.values)
    if bias.size != shift.size:
        return f"bias has {bias.size} values for {shift.size} output channels"
    tensor.values = (bias.astype(np.float64) + shift.reshape(bias.shape)).astype(bias.dtype)
    return None
