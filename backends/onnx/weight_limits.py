"""``-B isa=avx2``: per output channel, int8 weights as wide as ORT's int16 pair sums allow.

The avx2 profile plans 7-bit weights ([-64, 64]), which never saturate there. This step, run wherever a
plan is made with calibration data (``quantize.finalize_plan``), reads the input of each int8
Conv/Gemm/MatMul on the calibration samples (the FP32 model's, on the plan's uint8 grid): the code range
of each input channel (Conv) or column (Gemm/MatMul), stretched by ``HEADROOM`` around the zero point
for inputs the calibration did not see. Each output channel then takes the widest limit whose pair sums
cannot saturate for any codes in those ranges (``avx2_pairs.safe_limits``); depthwise convs, which ORT
sums in int32, take 8 bits. A recipe's ``weight_limit`` wins. The real EfficientNet-Lite0 on an AVX2
CPU, 512 held-out crops: 13.1 dB at 7 bits, 17.0 dB widened (nothing saturates on them), 18.7 dB with
8 bits where nothing saturates, as on VNNI (``tools/bench/REAL_AVX2.md``).

The input ranges are read once per model and sample set: the plans that range select, the latency guard
and the mixed-precision search make of one model stream the samples once.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dsqc.calibration.data import SampleSet
from dsqc.calibration.runner import stream_tensors
from dsqc.ir import Model, constant_value
from dsqc.quant.recipe import NodeOptions
from dsqc.quant.spec import Precision, QuantPlan, QuantSpec

from .avx2_pairs import FULL_LIMIT, SAFE_LIMIT, conv_index_ranges, conv_weight_rows, safe_limits

SAMPLES = 128  # calibration samples read for the input ranges
HEADROOM = 1.25  # input ranges stretched around the zero point: unseen inputs run past the calibration's
Ranges = tuple[np.ndarray, np.ndarray]  # lowest and highest value per input channel or column
Seen = tuple[onnx.ModelProto, dict[tuple[str, int], Ranges], dict[tuple[str, float, int], np.ndarray]]
_SEEN: OrderedDict[tuple[int, str, int], Seen] = OrderedDict()  # by (model id, data source, samples)
_MODELS_KEPT = 2  # the last models read; each entry holds its model, so an id is never reused


def fit_weight_limits(fp32: onnx.ModelProto, model: Model, plan: QuantPlan,
                      options: Mapping[str, NodeOptions], samples: SampleSet) -> dict[str, np.ndarray]:
    """Node name → per-output-channel weight limits, for layers with a channel wider than 7 bits."""
    layers = [node for node in model.graph.nodes if _fits(node, plan, options)]
    if not layers or not len(samples):
        return {}
    wanted = {(node.inputs[0].name, _axis(node)) for node in layers if not _depthwise(node)}
    ranges, fitted = _seen(fp32, wanted, samples.take(SAMPLES))
    limits = {}
    for node in layers:
        spec = plan.tensors[node.inputs[0].name]
        key = (node.name, float(spec.scale), int(spec.zero_point))  # a plan's input grid decides the limits
        if key not in fitted:
            fitted[key] = _fit(node, spec, ranges)
        limits[node.name] = fitted[key]
    return {name: found for name, found in limits.items() if found.max() > SAFE_LIMIT}


def _fits(node: gs.Node, plan: QuantPlan, options: Mapping[str, NodeOptions]) -> bool:
    """An int8 layer ORT runs on its u8s8 kernels, planned with the profile's 7-bit weights."""
    if plan.precision_of(node.name) is not Precision.INT8 or len(node.inputs) < 2:
        return False
    opts = options.get(node.name)
    weight = constant_value(node.inputs[1])
    w_spec = plan.tensors.get(node.inputs[1].name)
    x_spec = plan.tensors.get(node.inputs[0].name)
    if opts is None or opts.weight_limit is not None or weight is None or w_spec is None or x_spec is None:
        return False
    if w_spec.dtype != "int8" or w_spec.limit != SAFE_LIMIT or w_spec.axis is None:
        return False
    if x_spec.dtype != "uint8" or x_spec.axis is not None:
        return False
    if node.op == "Conv":
        return weight.ndim == 4 and node.attrs.get("auto_pad", "NOTSET") == "NOTSET"
    if node.op == "Gemm":
        return weight.ndim == 2 and not node.attrs.get("transA", 0)
    return node.op == "MatMul" and weight.ndim == 2


def _axis(node: gs.Node) -> int:
    """The input axis a reduction index runs along: channels (Conv) or the last one."""
    return 1 if node.op == "Conv" else -1


def _depthwise(node: gs.Node) -> bool:
    """One input and one output channel per group: ORT's depthwise kernel, which sums in int32."""
    weight = constant_value(node.inputs[1])
    group = int(node.attrs.get("group", 1))
    return node.op == "Conv" and weight is not None and weight.ndim == 4 and weight.shape[1] == 1 \
        and weight.shape[0] == group


def _seen(fp32: onnx.ModelProto, wanted: set[tuple[str, int]],
          data: SampleSet) -> tuple[dict[tuple[str, int], Ranges], dict[tuple[str, float, int], np.ndarray]]:
    """Lowest and highest value per channel (axis 1) or column (axis -1) of each wanted FP32 tensor on
    ``data``, read once per model and data whatever the plans that ask, and the limits fitted so far."""
    key = (id(fp32), data.source, len(data))
    entry = _SEEN.pop(key, None) or (fp32, {}, {})
    _SEEN[key] = entry
    while len(_SEEN) > _MODELS_KEPT:
        _SEEN.popitem(last=False)
    known = entry[1]
    missing = {item for item in wanted if item not in known}
    names = sorted({name for name, _ in missing})
    for batch in stream_tensors(fp32, names, data, 1) if names else ():  # batch 1: a Reshape may pin it
        for name, axis in missing:
            x = np.moveaxis(batch[name], axis, 0).reshape(batch[name].shape[axis], -1)
            lo, hi = x.min(axis=1).astype(np.float64), x.max(axis=1).astype(np.float64)
            if (name, axis) in known:
                lo, hi = np.minimum(lo, known[name, axis][0]), np.maximum(hi, known[name, axis][1])
            known[name, axis] = (lo, hi)
    return known, entry[2]


def _fit(node: gs.Node, spec: QuantSpec, ranges: Mapping[tuple[str, int], Ranges]) -> np.ndarray:
    """Per-output-channel limits of one layer whose input is planned on ``spec``'s uint8 grid; its input
    ranges are stretched by ``HEADROOM`` around the zero point (which padding reads). A depthwise conv
    takes 8 bits."""
    weight = constant_value(node.inputs[1])
    assert weight is not None
    if _depthwise(node):
        return np.full(weight.shape[0], FULL_LIMIT, np.int64)
    lo, hi = ranges[node.inputs[0].name, _axis(node)]
    scale, zero = float(spec.scale), int(spec.zero_point)
    codes = (np.clip(np.round(np.minimum(lo, 0.0) * HEADROOM / scale) + zero, 0, 255),
             np.clip(np.round(np.maximum(hi, 0.0) * HEADROOM / scale) + zero, 0, 255))
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        return safe_limits(conv_index_ranges(*codes, weight.shape, group), conv_weight_rows(weight, group))
    rows = weight.T if node.op == "MatMul" or not node.attrs.get("transB", 0) else weight
    return safe_limits([codes], [rows])
