"""``--mode auto``: per node, static (calibrated) or dynamic activation quantization, from a measurement.

For every node the static plan quantizes and the dynamic kernels take (``dynamic.candidates``), one ORT
pass over calibration samples (batch 1, as a dynamic kernel sees one request) runs two copies of the
node beside the FP32 graph, each fed the FP32 activation: the *static* copy with the plan's calibrated
input Q/DQ, its weight spec and its output Q/DQ when the plan has one (after the bias Add where the
target runs MatMul and bias as one kernel, ``tflite``); the *dynamic* copy with
``DynamicQuantizeLinear → DequantizeLinear`` on the input (or the per-row quantizer of a target whose
kernels measure each row, ``dsqc.quant.run_time_scales``) and int8 per-channel weights. Both store int8
weights (equal size). The node's output SQNR against FP32 decides: dynamic when it is better by more
than ``margin_db`` (default 1 dB) — static needs no run-time range pass and fuses requantization into
integer kernels (ORT's QLinearConv; ConvInteger has no fused form), so it wins ties.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from dsqc.calibration.data import SampleSet
from dsqc.quant import run_time_scales
from dsqc.quant.dynamic import Candidate, activation_quantizer, candidates, quantize_weight
from dsqc.quant.spec import Precision, QuantPlan, QuantSpec

log = logging.getLogger(__name__)
MARGIN_DB = 1.0
PROBE_SAMPLES = 16


@dataclass(frozen=True)
class NodeChoice:
    node: str
    op: str
    mode: str  # "static" | "dynamic"
    static_sqnr_db: float
    dynamic_sqnr_db: float
    samples: int

    @property
    def reason(self) -> str:
        return (f"{self.mode} (--mode auto): node output SQNR {self.dynamic_sqnr_db:.1f} dB dynamic vs "
                f"{self.static_sqnr_db:.1f} dB static on {self.samples} calibration samples "
                f"(dynamic needs > {MARGIN_DB:g} dB more)")

    def to_dict(self) -> dict[str, object]:
        return {"op": self.op, "mode": self.mode, "static_sqnr_db": round(self.static_sqnr_db, 3),
                "dynamic_sqnr_db": round(self.dynamic_sqnr_db, 3), "samples": self.samples}


def choose_modes(fp32: onnx.ModelProto, plan: QuantPlan, calib: SampleSet,
                 samples: int = PROBE_SAMPLES, margin_db: float = MARGIN_DB,
                 fused_biases: Mapping[str, str] | None = None, activation_scale: str = "tensor"
                 ) -> list[NodeChoice]:
    """Static or dynamic per candidate node the static ``plan`` quantizes, measured on ``calib``.
    ``fused_biases`` (bias Add → its MatMul, the planner's ``Placement.fused_biases``): where the target
    runs a MatMul and its bias as one kernel (``tflite``), the static output Q sits after the Add, so both
    copies add the bias and the static one is quantized there. ``activation_scale``: the target's run-time
    scale (``TargetProfile.dynamic_scale``), which the dynamic copy uses."""
    cands = [c for c in candidates(fp32) if plan.precision_of(c.node) is Precision.INT8
             and c.activation in plan.tensors and c.weight in plan.tensors]
    if not cands:
        return []
    probe, names = _probe_model(fp32, cands, plan, {m: a for a, m in (fused_biases or {}).items()},
                                activation_scale)
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    sess = ort.InferenceSession(probe.SerializeToString(), options, providers=["CPUExecutionProvider"])
    signal = {c.node: np.zeros(2) for c in cands}
    noise = {c.node: np.zeros(2) for c in cands}
    subset = calib.take(min(samples, len(calib)))
    count = 0
    for feeds in subset.batches(1):
        outs = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
        count += 1
        for c in cands:
            ref = outs[names[c.node][0]].astype(np.float64)
            for k, got in enumerate(names[c.node][1:]):
                signal[c.node][k] += float(np.sum(ref * ref))
                noise[c.node][k] += float(np.sum((ref - outs[got]) ** 2))
    choices = []
    for c in cands:
        static, dynamic = (10 * np.log10(max(signal[c.node][k], 1e-30) / max(noise[c.node][k], 1e-30))
                           for k in (0, 1))
        mode = "dynamic" if dynamic > static + margin_db else "static"
        choices.append(NodeChoice(c.node, c.op, mode, float(static), float(dynamic), count))
    log.info("auto mode: %d of %d nodes dynamic", sum(c.mode == "dynamic" for c in choices), len(choices))
    return choices


def _probe_model(fp32: onnx.ModelProto, cands: list[Candidate], plan: QuantPlan, bias_adds: dict[str, str],
                 activation_scale: str = "tensor") -> tuple[onnx.ModelProto, dict[str, tuple[str, str, str]]]:
    """FP32 graph + a static and a dynamic copy of each candidate (with its fused bias Add, ``bias_adds``:
    MatMul → Add); outputs: (fp32, static, dynamic)."""
    probe = onnx.ModelProto()
    probe.CopyFrom(fp32)
    g = probe.graph
    inits = {i.name: numpy_helper.to_array(i) for i in fp32.graph.initializer}
    nodes = {n.name: n for n in fp32.graph.node}
    del g.output[:]
    names: dict[str, tuple[str, str, str]] = {}
    for i, c in enumerate(cands):
        node = nodes[c.node]
        add = nodes.get(bias_adds.get(c.node, ""))
        reference = add.output[0] if add is not None else node.output[0]
        weight = inits[c.weight]
        tag = f"dsqc_probe{i}"
        x_spec = plan.tensors[c.activation]
        x_static = _fake_quant(g, tag + "_x", c.activation, x_spec)
        w_static = _dequantized(weight, plan.tensors[c.weight])
        qw, scale = quantize_weight(weight, c.axis)
        view = [1] * weight.ndim
        view[c.axis] = -1
        w_dynamic = (qw.astype(np.float32) * scale.reshape(view)).astype(np.float32)
        x_dyn = f"{tag}_dx"
        g.node.extend(activation_quantizer(activation_scale, c.op, c.activation, x_dyn, tag))
        outs = []
        for kind, x, w in (("static", x_static, w_static), ("dynamic", x_dyn, w_dynamic)):
            g.initializer.append(numpy_helper.from_array(w, f"{tag}_{kind}_w"))
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            copy.name = f"{tag}_{kind}"
            copy.input[0], copy.input[1] = x, f"{tag}_{kind}_w"
            del copy.output[:]
            copy.output.append(f"{tag}_{kind}_y")
            g.node.append(copy)
            y = copy.output[0]
            if add is not None:  # the bias the target's kernel adds before its output Q
                biased = onnx.NodeProto()
                biased.CopyFrom(add)
                biased.name = f"{tag}_{kind}_bias"
                biased.input[list(add.input).index(node.output[0])] = y
                biased.output[0] = y = f"{tag}_{kind}_yb"
                g.node.append(biased)
            out_spec = plan.tensors.get(reference)
            if kind == "static" and out_spec is not None and out_spec.axis is None:
                y = _fake_quant(g, tag + "_y", y, out_spec)
            outs.append(y)
        names[c.node] = (reference, outs[0], outs[1])
        for name in (reference, *outs):
            g.output.append(helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    run_time_scales.add_functions(probe)
    return probe, names


def _fake_quant(g: onnx.GraphProto, tag: str, x: str, spec: QuantSpec) -> str:
    """Q → DQ of ``x`` with a per-tensor activation spec; returns the dequantized tensor's name."""
    dtype = onnx.TensorProto.UINT8 if spec.dtype == "uint8" else onnx.TensorProto.INT8
    zp = helper.make_tensor(f"{tag}_zp", dtype, [], [int(spec.zero_point)])
    g.initializer.extend([numpy_helper.from_array(np.asarray(spec.scale, np.float32), f"{tag}_s"), zp])
    g.node.append(helper.make_node("QuantizeLinear", [x, f"{tag}_s", f"{tag}_zp"], [f"{tag}_q"]))
    g.node.append(helper.make_node("DequantizeLinear", [f"{tag}_q", f"{tag}_s", f"{tag}_zp"], [f"{tag}_dq"]))
    return f"{tag}_dq"


def _dequantized(weight: np.ndarray, spec: QuantSpec) -> np.ndarray:
    """The weight as the static plan stores it (int8 per channel, its limit), back in float."""
    if spec.block_size is not None:
        raise ValueError("blockwise weights are not dynamic candidates")
    scale = spec.scale.astype(np.float32)
    if spec.axis is not None:
        view = [1] * weight.ndim
        view[spec.axis] = -1
        scale = scale.reshape(view)
    q = np.clip(np.rint(weight / scale), spec.qmin, spec.qmax)
    return (q * scale).astype(np.float32)
