"""What BatchNormalization passes share: the inference-mode check and the per-channel affine form."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import constant_value, is_used

DEFAULT_EPSILON = 1e-5


def batchnorm_refusal(graph: gs.Graph, bn: gs.Node) -> str | None:
    """Why ``bn`` cannot be treated as a constant per-channel affine map, or ``None`` if it can."""
    if int(bn.attrs.get("training_mode", 0)) != 0:
        return "training_mode=1"
    if int(bn.attrs.get("spatial", 1)) != 1:
        return "spatial=0 (per-element statistics)"
    if int(bn.attrs.get("is_test", 1)) != 1:
        return "is_test=0 (training form)"
    if any(is_used(graph, out) for out in bn.outputs[1:]):
        return "training-mode statistics outputs are used"
    if len(bn.inputs) != 5:
        return f"{len(bn.inputs)} inputs"
    params = [constant_value(t) for t in bn.inputs[1:]]
    for tensor, array in zip(bn.inputs[1:], params, strict=True):
        if array is None:
            return f"parameter {tensor.name} is not constant"
    sizes = {a.size for a in params if a is not None}
    ndims = {a.ndim for a in params if a is not None}
    if len(sizes) != 1 or ndims != {1}:
        return "parameters are not all 1-D of one length"
    return None


def batchnorm_affine(bn: gs.Node) -> tuple[np.ndarray, np.ndarray]:
    """``(scale, shift)`` in float64 with ``BN(x) = x * scale + shift`` along the channel axis.

    Call only after ``batchnorm_refusal`` returned ``None``.
    """
    gamma, beta, mean, var = (
        np.asarray(constant_value(t), dtype=np.float64) for t in bn.inputs[1:]
    )
    epsilon = float(bn.attrs.get("epsilon", DEFAULT_EPSILON))
    scale = gamma / np.sqrt(var + epsilon)
    return scale, beta - mean * scale
