"""``-B isa=avx2``: per output channel, int8 weights as wide as ORT's int16 pair sums allow.

The avx2 profile plans 7-bit weights ([-64, 64]), which never saturate there. This step, run wherever a
plan is made with calibration data (``quantize.finalize_plan``), reads the input of each int8
Conv/Gemm/MatMul on the calibration samples (the FP32 model's, on the plan's uint8 grid): the code range
of each input channel (Conv) or column (Gemm/MatMul), stretched by ``HEADROOM`` around the zero point
for inputs the calibration did not see. Each output channel then takes the widest limit whose pair sums
cannot saturate for any codes in those ranges (``avx2_pairs.safe_limits``); depthwise convs, which ORT
sums in int32, take 8 bits. A recipe's ``weight_limit`` wins. The real EfficientNet-Lite0 on an AVX2
CPU: 13.1 dB at 7 bits, 17.6 dB widened, 18.7 dB with 8 bits where they do not saturate
(``tools/bench/REAL_AVX2.md``).

Fitted limits are kept per (layer weights, input grid, samples), so the plans that range select, the
latency guard and the mixed-precision search make of one model read the samples once.
"""

from __future__ import annotations

import hashlib
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
_CACHE: OrderedDict[tuple[object, ...], np.ndarray] = OrderedDict()
_CACHE_SIZE = 4096
Ranges = tuple[np.ndarray, np.ndarray]  # lowest and highest code per input channel or column


def fit_weight_limits(fp32: onnx.ModelProto, model: Model, plan: QuantPlan,
                      options: Mapping[str, NodeOptions], samples: SampleSet) -> dict[str, np.ndarray]:
    """Node name → per-output-channel weight limits, for layers with a channel wider than 7 bits."""
    layers = {node.name: node for node in model.graph.nodes if _fits(node, plan, options)}
    if not layers or not len(samples):
        return {}
    data = samples.take(SAMPLES)
    keys = {name: _key(node, plan, data) for name, node in layers.items()}
    fitted = {name: _CACHE[keys[name]] for name in layers if keys[name] in _CACHE}
    missing = [layers[name] for name in layers if name not in fitted]
    wanted = {(node.inputs[0].name, _axis(node)) for node in missing if not _depthwise(node)}
    ranges = _input_ranges(fp32, plan, wanted, data) if wanted else {}
    for node in missing:
        found = ranges.get((node.inputs[0].name, _axis(node)))
        fitted[node.name] = _remember(keys[node.name], _fit(node, found))
    return {name: limits for name, limits in fitted.items() if limits.max() > SAFE_LIMIT}


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


def _input_ranges(fp32: onnx.ModelProto, plan: QuantPlan, wanted: set[tuple[str, int]],
                  data: SampleSet) -> dict[tuple[str, int], Ranges]:
    """Code range per channel (axis 1) or column (axis -1) of each wanted FP32 tensor on ``data``, on its
    planned uint8 grid, stretched by ``HEADROOM`` around the zero point (which padding reads)."""
    names = sorted({name for name, _ in wanted})
    seen: dict[tuple[str, int], tuple[np.ndarray, np.ndarray]] = {}
    for batch in stream_tensors(fp32, names, data, 1):  # one at a time: a Reshape may pin batch 1
        for name, axis in wanted:
            x = np.moveaxis(batch[name], axis, 0).reshape(batch[name].shape[axis], -1)
            lo, hi = x.min(axis=1), x.max(axis=1)
            if (name, axis) in seen:
                lo, hi = np.minimum(lo, seen[name, axis][0]), np.maximum(hi, seen[name, axis][1])
            seen[name, axis] = (lo, hi)
    ranges = {}
    for (name, axis), (lo, hi) in seen.items():
        spec: QuantSpec = plan.tensors[name]
        scale, zero = float(spec.scale), int(spec.zero_point)
        low = np.clip(np.round(np.minimum(lo, 0.0) * HEADROOM / scale) + zero, 0, 255)
        high = np.clip(np.round(np.maximum(hi, 0.0) * HEADROOM / scale) + zero, 0, 255)
        ranges[name, axis] = (low, high)
    return ranges


def _key(node: gs.Node, plan: QuantPlan, data: SampleSet) -> tuple[object, ...]:
    weight = constant_value(node.inputs[1])
    assert weight is not None
    spec = plan.tensors[node.inputs[0].name]
    digest = hashlib.blake2b(np.ascontiguousarray(weight).tobytes(), digest_size=16).hexdigest()
    attrs = tuple(sorted((k, str(v)) for k, v in node.attrs.items()))
    return (node.op, digest, attrs, float(spec.scale), int(spec.zero_point), data.source, len(data))


def _remember(key: tuple[object, ...], limits: np.ndarray) -> np.ndarray:
    _CACHE[key] = limits
    while len(_CACHE) > _CACHE_SIZE:
        _CACHE.popitem(last=False)
    return limits


def _fit(node: gs.Node, ranges: Ranges | None) -> np.ndarray:
    """Per-output-channel limits of one layer (a depthwise conv needs no input ranges)."""
    weight = constant_value(node.inputs[1])
    assert weight is not None
    if _depthwise(node):
        return np.full(weight.shape[0], FULL_LIMIT, np.int64)
    assert ranges is not None
    if node.op == "Conv":
        group = int(node.attrs.get("group", 1))
        return safe_limits(conv_index_ranges(*ranges, weight.shape, group), conv_weight_rows(weight, group))
    rows = weight.T if node.op == "MatMul" or not node.attrs.get("transB", 0) else weight
    return safe_limits([ranges], [rows])
