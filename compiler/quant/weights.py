"""Specs of a node's constants: int8 per-channel / int4 blockwise weights, int8 tables, int32 biases."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import constant_value
from dsqc.op_kinds import BIAS_INPUT, WEIGHT_INPUT, weight_output_axis, weight_reduction_axis
from dsqc.quant.profile import TargetProfile
from dsqc.quant.qparams import bias_spec, fit_bias, weight_spec
from dsqc.quant.recipe import NodeOptions
from dsqc.quant.spec import Precision, QuantPlan

FLOAT_TYPES = {np.dtype(np.float32), np.dtype(np.float16)}


def const_weight(node: gs.Node) -> bool:
    return len(node.inputs) > 1 and constant_value(node.inputs[1]) is not None


def is_float_constant(tensor: gs.Tensor) -> bool:
    """A constant input holding floats (weights, biases, constant operands)."""
    value = constant_value(tensor)
    return value is not None and value.dtype.kind == "f"


def is_table_lookup(node: gs.Node) -> bool:
    """Gather (axis 0) from a constant 2-D float table, e.g. an embedding: quantizable weight-only."""
    if node.op != "Gather" or int(node.attrs.get("axis", 0)) != 0 or not node.inputs:
        return False
    table = constant_value(node.inputs[0])
    return table is not None and table.ndim == 2 and np.dtype(table.dtype) in FLOAT_TYPES


def plan_constants(node: gs.Node, plan: QuantPlan, opts: NodeOptions, profile: TargetProfile,
                   channel_limits: np.ndarray | None = None) -> None:
    """Weight, table and int32 bias specs of one node, from its precision in ``plan``; ``channel_limits``:
    the int8 weight limit of each output channel, fitted to the target's kernel (``fit_weight_limits``)."""
    precision = plan.precision_of(node.name)
    if is_table_lookup(node) and precision in (Precision.INT8, Precision.INT4):
        _plan_table(node, plan, opts, precision)
        return
    if node.op not in WEIGHT_INPUT or precision not in (Precision.INT8, Precision.INT4):
        return
    w_tensor = node.inputs[WEIGHT_INPUT[node.op]]
    weight = constant_value(w_tensor)
    if weight is None:
        return
    axis = weight_output_axis(node, weight.ndim)
    if precision is Precision.INT4:
        block = opts.block_size or None
        k_axis = weight_reduction_axis(node, weight.ndim)
        plan.tensors[w_tensor.name] = weight_spec(weight, k_axis if block else axis, "int4", block)
        return
    per_channel = opts.per_channel and profile.per_channel_weights and weight.ndim >= 2
    limit = channel_limits if channel_limits is not None and per_channel else \
        opts.weight_limit or profile.weight_limit
    w_spec = weight_spec(weight, axis if per_channel else None, "int8",
                         power_of_two=profile.power_of_two_scales, limit=limit)
    plan.tensors[w_tensor.name] = w_spec
    bias_index = BIAS_INPUT.get(node.op)
    if bias_index is None or len(node.inputs) <= bias_index or not node.inputs[bias_index].name:
        return
    bias = constant_value(node.inputs[bias_index])
    x_spec = plan.tensors.get(node.inputs[0].name)
    beta_scaled = node.op == "Gemm" and node.attrs.get("beta", 1.0) != 1.0
    if bias is None or bias.ndim != 1 or x_spec is None or beta_scaled:
        return
    if node.op == "ConvTranspose" and w_spec.axis is not None and int(node.attrs.get("group", 1)) != 1:
        return
    if w_spec.axis is not None and w_spec.scale.shape != bias.shape:
        return
    w_spec = plan.tensors[w_tensor.name] = fit_bias(w_spec, bias, x_spec.scale)
    scale = w_spec.scale if w_spec.axis is not None else np.full(bias.shape, w_spec.scale, np.float32)
    plan.tensors[node.inputs[bias_index].name] = bias_spec(x_spec.scale, scale)


def _plan_table(node: gs.Node, plan: QuantPlan, opts: NodeOptions, precision: Precision) -> None:
    """Embedding rows: int8 per row, or int4 in blocks along the row (per row when block_size is 0)."""
    table = constant_value(node.inputs[0])
    assert table is not None
    if precision is Precision.INT4:
        block = opts.block_size or None
        spec = weight_spec(table, 1 if block else 0, "int4", block)
    else:
        spec = weight_spec(table, 0, "int8")
    plan.tensors[node.inputs[0].name] = spec
