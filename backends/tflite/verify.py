"""Verification of a written ``.tflite`` in LiteRT: against the FP32 ONNX model (SQNR, top-1), against
the QDQ model in ONNX Runtime (output LSBs and, per int8 tensor, LSB differences), and latency.

ONNX Runtime with graph optimizations off requantizes in float with round-half-even; TFLite uses an
integer multiplier and shift, so ±1 LSB on ties is expected and reported, not hidden.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np
import onnx

from dsqc.metrics import output_metrics, sqnr_db, top1_agreement
from dsqc.verify import run_batches, session

from . import runtime

log = logging.getLogger(__name__)
Feeds = dict[str, np.ndarray]


def outputs_vs_onnx(blob: bytes, reference: onnx.ModelProto, batches: list[Feeds],
                    nhwc_in: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run ``blob`` on every held-out sample and compare each output with ``reference`` in ORT."""
    names = [i.name for i in reference.graph.input
             if i.name not in {init.name for init in reference.graph.initializer}]
    ref = run_batches(session(reference), batches)
    got_list = runtime.run(blob, runtime.samples(batches, names), nhwc_in=nhwc_in)
    got = dict(zip(ref, got_list, strict=True))
    per_output = {name: output_metrics(ref[name], got[name].reshape(ref[name].shape)) for name in ref}
    first = next(iter(ref))
    result: dict[str, Any] = {"samples": int(ref[first].shape[0]), "outputs": per_output,
                              "min_sqnr_db": min(m["sqnr_db"] for m in per_output.values())}
    if ref[first].ndim == 2 and ref[first].shape[1] > 1:
        result["top1_agreement"] = top1_agreement(ref[first], got[first])
    return result, got


def outputs_vs_qdq(got: dict[str, np.ndarray], qdq: onnx.ModelProto, batches: list[Feeds],
                   output_scales: dict[str, float]) -> dict[str, Any]:
    """TFLite against ORT running the QDQ model: SQNR and, for int8 outputs, the LSB difference."""
    ref = run_batches(session(qdq, optimize=False), batches)
    result: dict[str, Any] = {}
    for name, value in ref.items():
        entry: dict[str, Any] = {"sqnr_db": sqnr_db(value, got[name].reshape(value.shape))}
        if name in output_scales:
            lsb = np.abs(np.rint((got[name].reshape(value.shape) - value) / output_scales[name]))
            entry.update(max_lsb=int(lsb.max(initial=0)), fraction_off=float(np.mean(lsb > 0)))
        result[name] = entry
    return result


def tensors_vs_qdq(blob: bytes, qdq: onnx.ModelProto, sample: Feeds, int8_tensors: dict[str, bool],
                   input_names: list[str]) -> dict[str, Any]:
    """Per int8 tensor (named after its ONNX QuantizeLinear output): LSB differences TFLite vs ORT."""
    q_outputs = {n.output[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    names = sorted(set(int8_tensors) & q_outputs)
    if not names:
        return {"tensors": 0}
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT8, None)
                              for n in names if n not in existing)
    ort_values = dict(zip(names, session(model, optimize=False).run(names, sample), strict=True))
    tfl = runtime.tensors(blob, [sample[n] for n in input_names], set(names))
    per: dict[str, dict[str, float]] = {}
    for name in names:
        if name not in tfl:
            continue
        a = tfl[name]
        if int8_tensors[name] and a.ndim == 4:
            a = a.transpose(0, 3, 1, 2)
        b = np.asarray(ort_values[name])
        if a.size != b.size:
            continue
        diff = np.abs(a.astype(np.int32).reshape(b.shape) - b.astype(np.int32))
        per[name] = {"max_lsb": int(diff.max(initial=0)), "fraction_off": float(np.mean(diff > 0))}
    if not per:
        return {"tensors": 0}
    worst = max(per, key=lambda n: (per[n]["max_lsb"], per[n]["fraction_off"]))
    return {"tensors": len(per), "max_lsb": per[worst]["max_lsb"], "worst_tensor": worst,
            "tensors_exact": sum(1 for v in per.values() if v["max_lsb"] == 0),
            "tensors_within_1_lsb": sum(1 for v in per.values() if v["max_lsb"] <= 1),
            "mean_fraction_off": float(np.mean([v["fraction_off"] for v in per.values()]))}


def latency(int8_blob: bytes, fp32_blob: bytes, sample: list[np.ndarray], nhwc_in: bool = False,
            runs: int = 40) -> dict[str, float]:
    """Median ms (1 thread, XNNPACK) of the int8 file and the float32 file of the same graph."""
    int8 = runtime.latency_ms(int8_blob, sample, nhwc_in, runs=runs)
    fp32 = runtime.latency_ms(fp32_blob, sample, nhwc_in, runs=runs)
    return {"int8": int8, "float32": fp32, "speedup": fp32 / max(int8, 1e-9), "threads": 1, "runs": runs}
