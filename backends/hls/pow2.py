"""Power-of-two scales for shift-only hardware: snap an existing plan and re-insert Q/DQ.

Used when ``power_of_two_scales`` is asked in ``backend_options`` but the plan was made with the
plain ``hls`` profile. Each activation keeps its calibrated range (recovered from its spec) and gets
``activation_spec(..., power_of_two=True)`` (scale rounded up to 2^k); weights and biases are
re-derived from the FP32 constants exactly as the planner does. The result is a new canonical QDQ
model — the one ORT is compared against.
"""

from __future__ import annotations

import math

import numpy as np
import onnx

from dsqc.ir import Model, constant_value
from dsqc.model_io import INT4_OPSET, at_least_opset
from dsqc.passes.insert_qdq import InsertQDQ
from dsqc.quant.qparams import activation_spec, bias_spec, weight_spec
from dsqc.quant.spec import QuantPlan

_BIAS_OPS = {"Conv": 2, "Gemm": 2}


def _pow2(values: np.ndarray) -> bool:
    return all(math.frexp(float(v))[0] == 0.5 for v in np.asarray(values).reshape(-1))


def is_pow2_plan(plan: QuantPlan) -> bool:
    return all(_pow2(spec.scale) for spec in plan.tensors.values())


def snap_to_pow2(fp32: onnx.ModelProto, plan: QuantPlan) -> tuple[onnx.ModelProto, QuantPlan]:
    """The canonical QDQ model and plan with every scale a power of two."""
    if any(spec.dtype == "int16" for spec in plan.tensors.values()):
        fp32 = at_least_opset(fp32, INT4_OPSET)  # int16 QuantizeLinear: opset 21
    model = Model.from_proto(fp32)
    tensors = model.graph.tensors()
    new = QuantPlan(nodes=dict(plan.nodes), folded_activations=dict(plan.folded_activations),
                    notes=[*plan.notes, "hls: scales snapped to powers of two (shift-only requantization)"])
    for name, spec in plan.tensors.items():
        value = constant_value(tensors[name]) if name in tensors else None
        if value is not None and spec.dtype in ("int8", "int4"):
            new.tensors[name] = weight_spec(np.asarray(value), spec.axis, spec.dtype, spec.block_size,
                                            power_of_two=True)
        elif value is None and spec.axis is None and spec.dtype in ("int8", "uint8", "int16"):
            lo, hi = spec.representable_range()
            new.tensors[name] = activation_spec(lo, hi, spec.dtype, False, power_of_two=True)
    for node in model.graph.nodes:
        index = _BIAS_OPS.get(node.op)
        if index is None or len(node.inputs) <= index or node.inputs[index].name not in plan.tensors:
            continue
        x_spec, w_spec = new.tensors.get(node.inputs[0].name), new.tensors.get(node.inputs[1].name)
        if x_spec is None or w_spec is None:
            continue
        channels = plan.tensors[node.inputs[index].name].scale.shape
        w_scale = np.broadcast_to(w_spec.scale, channels).astype(np.float32)
        new.tensors[node.inputs[index].name] = bias_spec(x_spec.scale, w_scale)
    missing = sorted(set(plan.tensors) - set(new.tensors))
    if missing:
        from dsqc.errors import UnsupportedError

        raise UnsupportedError(f"power_of_two_scales: cannot snap tensor '{missing[0]}' to a power of two")
    result = InsertQDQ(new)(model)  # in the active pass context: --dump-ir and timings see it
    proto = result.model.to_proto()
    proto.ir_version = fp32.ir_version
    return proto, new
