"""Learned rounding boosters (AdaRound, GPTQ) on the QDQ model: layer inputs from calibration data.

Both passes re-choose the integer weights of a layer given what the layer reads. That input is taken
from the **quantized** model (Q/DQ on activations, preceding layers already re-rounded), so each
layer also absorbs the error that reaches it from upstream — AdaRound's "asymmetric reconstruction"
(Nagel et al. 2020, §5) and GPTQ's sequential order. Layers are therefore processed in waves: a wave
holds every remaining layer none of whose upstream layers is still waiting, and each wave costs one
ORT pass of the QDQ model over the calibration samples (plus, for AdaRound, one of the FP32 model for
the target ``W · x_fp32``). AdaRound keeps a bounded subset of samples (rows for Gemm/MatMul);
GPTQ accumulates ``H = Σ 2 xxᵀ`` over all of them.

Layers whose input the shift booster centred (``trt``) are fitted on the unshifted input, and their
bias fold ``m · Σ W_q`` is redone with the new integers afterwards.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from dsqc.calibration.data import SampleSet
from dsqc.calibration.runner import stream_tensors
from dsqc.ir import Model, constant_value, producer
from dsqc.model_io import prepare
from dsqc.op_kinds import MATRIX_OPS
from dsqc.passes.adaround import LAYERS as ADAROUND_LAYERS
from dsqc.passes.adaround import AdaRound, LayerInputs
from dsqc.passes.bias_correction import BiasCorrection, dequantize_constant
from dsqc.passes.gptq import GPTQ
from dsqc.passes.gptq import LAYERS as GPTQ_LAYERS
from dsqc.passes.shift_activations import shift_corrections
from dsqc.quant.spec import QuantPlan

log = logging.getLogger(__name__)
KEEP_BYTES = 48 << 20  # AdaRound: stored inputs per layer and per model (quantized + FP32 each)
REFOLD_MARK = "dsqc.shift_bias.rounding"
ROUNDED_MARK = "dsqc.rounded_layers"  # model metadata: the layers whose integers were learned, one a line


@dataclass(frozen=True)
class RoundingOptions:
    adaround: bool = False
    gptq: bool = False
    iterations: int = 500
    act_order: bool = False
    samples: int = 256


def learn_rounding(fp32: onnx.ModelProto, qdq: onnx.ModelProto, plan: QuantPlan | None, samples: SampleSet,
                   options: RoundingOptions, batch_size: int = 8) -> onnx.ModelProto:
    """``qdq`` with GPTQ on its Gemm/MatMul weights (when asked) and AdaRound on the other layers'
    (all of them when GPTQ is not asked); scales, zero points and ranges as in ``plan``."""
    source, model = Model.from_proto(fp32), Model.from_proto(qdq)
    ref_nodes = {n.name: n for n in source.graph.nodes}
    weights: dict[str, np.ndarray] = {}
    limits: dict[str, tuple[int, int]] = {}
    method: dict[str, str] = {}
    for node in model.graph.nodes:
        ref = ref_nodes.get(node.name)
        wanted = "gptq" if options.gptq and node.op in GPTQ_LAYERS else \
            "adaround" if options.adaround and node.op in ADAROUND_LAYERS else None
        w = constant_value(ref.inputs[1]) if ref is not None and len(ref.inputs) > 1 else None
        dq = producer(node.inputs[1]) if len(node.inputs) > 1 else None
        if wanted is None or w is None or dq is None or dq.op != "DequantizeLinear":
            continue
        assert ref is not None
        weights[node.name], method[node.name] = w, wanted
        spec = plan.tensors.get(ref.inputs[1].name) if plan is not None else None
        if spec is not None:
            limits[node.name] = (spec.qmin, spec.qmax)
    _, shift_means = shift_corrections(source.graph)
    layers = {n.name: n for n in model.graph.nodes if n.name in method}
    before = {n: dequantize_constant(producer(layers[n].inputs[1])) for n in shift_means if n in layers}
    calib = samples.take(options.samples)
    rounded: list[str] = []
    for wave in _waves(model.graph, set(method)):
        proto = _export(model, qdq)
        nodes = {n.name: n for n in model.graph.nodes if n.name in wave}
        shifts = {n: -float(shift_means[n][0]) for n in wave if n in shift_means}
        ada = [n for n in wave if method[n] == "adaround"]
        if ada:
            data = _adaround_inputs(fp32, proto, {n: (ref_nodes[n], nodes[n]) for n in ada}, shifts,
                                    calib, batch_size)
            adaround = AdaRound({n: weights[n] for n in ada}, data, limits, options.iterations)
            adaround(model)
            rounded += [n for n, r in adaround.results.items() if r.kept and r.changed]
        gq = [n for n in wave if method[n] == "gptq"]
        if gq:
            hessians = _hessians(proto, {n: nodes[n] for n in gq}, shifts, calib, batch_size)
            gptq = GPTQ({n: weights[n] for n in gq}, hessians, limits, act_order=options.act_order)
            gptq(model)
            rounded += [n for n, g in gptq.results.items() if g.kept and g.changed]
    if rounded:  # bias correction leaves these alone: their fit already includes the mean error
        model.metadata[ROUNDED_MARK] = "\n".join(sorted(rounded))
    refold = {n: w for n, w in before.items() if w is not None and n in rounded}
    if refold:
        BiasCorrection(refold, {n: shift_means[n] for n in refold}, mark=REFOLD_MARK)(model)
    log.info("boosters: learned rounding on %d layers (%s)", len(method),
             ", ".join(f"{sum(v == m for v in method.values())} {m}" for m in ("adaround", "gptq")))
    return prepare(_export(model, qdq), "re-rounded model")


def _export(model: Model, like: onnx.ModelProto) -> onnx.ModelProto:
    proto = model.to_proto()
    proto.ir_version = like.ir_version
    return proto


def _waves(graph: gs.Graph, layers: set[str]) -> list[list[str]]:
    """``layers`` grouped so that no layer's upstream holds a layer of its own or a later wave."""
    level: dict[str, int] = {}  # tensor name → number of layers on the longest path into it
    waves: dict[int, list[str]] = {}
    graph.toposort()
    for node in graph.nodes:
        depth = max((level.get(t.name, 0) for t in node.inputs), default=0)
        if node.name in layers:
            waves.setdefault(depth, []).append(node.name)
            depth += 1
        for out in node.outputs:
            level[out.name] = depth
    return [waves[d] for d in sorted(waves)]


def _rows(node: gs.Node, x: np.ndarray) -> np.ndarray:
    return x.reshape(-1, x.shape[-1]) if node.op in MATRIX_OPS else x


def _adaround_inputs(fp32: onnx.ModelProto, qdq: onnx.ModelProto, nodes: dict[str, tuple[gs.Node, gs.Node]],
                     shifts: dict[str, float], samples: SampleSet, batch_size: int) -> dict[str, LayerInputs]:
    """Each layer's input in the QDQ and the FP32 model on the same samples (rows subsampled alike)."""
    fp_names = {n: ref.inputs[0].name for n, (ref, _) in nodes.items()}
    q_names = {n: node.inputs[0].name for n, (_, node) in nodes.items()}
    kept: dict[str, tuple[list[np.ndarray], list[np.ndarray]]] = {n: ([], []) for n in nodes}
    budget = KEEP_BYTES // max(1, len(nodes))
    rng = np.random.default_rng(0)
    pairs = zip(stream_tensors(fp32, list(fp_names.values()), samples, batch_size),
                stream_tensors(qdq, list(q_names.values()), samples, batch_size), strict=True)
    for fp_batch, q_batch in pairs:
        for name, (_, node) in nodes.items():
            x_fp, x_q = _rows(node, fp_batch[fp_names[name]]), _rows(node, q_batch[q_names[name]])
            total = sum(a.nbytes for a in kept[name][0])
            per_item = max(1, x_q[0].nbytes)
            room = max(0, budget - total) // per_item
            if room < len(x_q):
                pick = np.sort(rng.choice(len(x_q), size=int(room), replace=False))
                x_fp, x_q = x_fp[pick], x_q[pick]
            shift = shifts.get(name, 0.0)
            kept[name][0].append(np.asarray(x_fp, np.float32) + shift)
            kept[name][1].append(np.asarray(x_q, np.float32) + shift)
    return {n: LayerInputs(np.concatenate(q), np.concatenate(fp)) for n, (fp, q) in kept.items()}


def _hessians(qdq: onnx.ModelProto, nodes: dict[str, gs.Node], shifts: dict[str, float], samples: SampleSet,
              batch_size: int) -> dict[str, np.ndarray]:
    """``Σ 2 xxᵀ / rows`` over every input row each layer reads in the QDQ model."""
    names = {n: node.inputs[0].name for n, node in nodes.items()}
    sums: dict[str, np.ndarray] = {}
    counts = dict.fromkeys(nodes, 0)
    for batch in stream_tensors(qdq, list(names.values()), samples, batch_size):
        for name, node in nodes.items():
            x = _rows(node, batch[names[name]]).astype(np.float64) + shifts.get(name, 0.0)
            x = x[np.all(np.isfinite(x), axis=1)]
            sums[name] = sums.get(name, 0.0) + 2.0 * x.T @ x
            counts[name] += len(x)
    return {n: h / max(counts[n], 1) for n, h in sums.items()}
