"""Verification of a written ``.tflite`` in LiteRT: against the FP32 ONNX model (SQNR, top-1), against
the QDQ model in ONNX Runtime (output LSBs and, per int8 tensor, LSB differences), and latency.

ONNX Runtime with graph optimizations off requantizes in float with round-half-even; TFLite uses an
integer multiplier and shift, so ±1 LSB on ties is expected and reported, not hidden.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import Any

import numpy as np
import onnx

from dsqc.calibration.data import fixed_batch, model_inputs
from dsqc.errors import DsqcError
from dsqc.integer import Program
from dsqc.metrics import sqnr_db, top1_agreement
from dsqc.verify import compare_outputs, detections, run_batches, session, worst_sqnr

from . import runtime
from .graph import Graph
from .validate import validate
from .writer import serialize

log = logging.getLogger(__name__)
Feeds = dict[str, np.ndarray]


def random_feeds(model: onnx.ModelProto, batches: int = 2, batch: int = 4) -> list[Feeds]:
    """Standard-normal float inputs (symbolic dims set to ``batch``); [] if an input is not float."""
    rng = np.random.default_rng(0)
    inits = {t.name for t in model.graph.initializer}
    out: list[Feeds] = []
    for _ in range(batches):
        feeds: Feeds = {}
        for value in model.graph.input:
            if value.name in inits:
                continue
            if value.type.tensor_type.elem_type != onnx.TensorProto.FLOAT:
                return []
            dims = [d.dim_value or batch for d in value.type.tensor_type.shape.dim]
            feeds[value.name] = rng.standard_normal(dims).astype(np.float32)
        out.append(feeds)
    return out


def outputs_vs_onnx(blob: bytes, reference: onnx.ModelProto, batches: list[Feeds], nhwc_in: bool = False,
                    mask_padding: bool = False) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Run ``blob`` on every held-out sample and compare each output with ``reference`` in ORT; with
    ``mask_padding``, [batch, seq] outputs over real tokens only, as the build's ORT verification."""
    names = [i.name for i in reference.graph.input
             if i.name not in {init.name for init in reference.graph.initializer}]
    ref = run_batches(session(reference), batches)
    batch = fixed_batch(model_inputs(reference)) or 1
    got_list = runtime.run(blob, runtime.samples(batches, names, batch), nhwc_in=nhwc_in)
    got = dict(zip(ref, got_list, strict=True))
    got = {name: got[name].reshape(ref[name].shape) for name in ref}
    per_output, padding = compare_outputs(reference, batches, ref, got, mask_padding)
    first = next(iter(ref))
    result: dict[str, Any] = {"samples": int(ref[first].shape[0]), "outputs": per_output,
                              "min_sqnr_db": worst_sqnr(per_output)}
    if padding is not None:
        result["padding_mask"] = padding
    if ref[first].ndim == 2 and ref[first].shape[1] > 1:
        result["top1_agreement"] = top1_agreement(ref[first], got[first])
    if (boxes := detections(reference, ref, got)) is not None:
        result["detections"] = boxes
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


def tensors_vs_references(graph: Graph, qdq: onnx.ModelProto, sample: Feeds,
                          input_names: list[str]) -> dict[str, Any]:
    """Per int8 tensor named after an ONNX QuantizeLinear output: LSB differences between TFLite and
    (a) ORT running the QDQ model with float requantization, (b) dsqc's integer reference program.

    The graph is rewritten with those tensors as extra outputs, so XNNPACK (the runtime that ships)
    computes them; LiteRT's builtin kernels differ from XNNPACK by 1 LSB on a few percent of elements.
    """
    q_nodes = {n.output[0]: n.input[0] for n in qdq.graph.node if n.op_type == "QuantizeLinear"}
    probes = {t.name: i for i, t in enumerate(graph.tensors)
              if t.dtype == "int8" and t.data is None and t.name in q_nodes}
    if not probes:
        return {}
    names = sorted(probes)
    probe = replace(graph, outputs=[*graph.outputs, *(probes[n] for n in names)])
    blob = serialize(probe, signature=False)
    validate(blob)
    tfl = runtime.named_outputs(blob, [sample[n] for n in input_names])
    for name in names:
        if graph.tensors[probes[name]].nhwc and tfl[name].ndim == 4:
            tfl[name] = tfl[name].transpose(0, 3, 1, 2)
    order = list(q_nodes)
    result = {"vs_ort_qdq": _lsb(tfl, _ort_tensors(qdq, names, sample), order)}
    program = _integer_program(qdq)
    if isinstance(program, str):
        result["vs_integer_reference"] = {"skipped": program}
        return result
    try:
        reference = _reference_tensors(program, q_nodes, sample)
    except (DsqcError, ValueError, KeyError) as exc:
        log.info("integer reference unavailable for this model: %s", exc)
        result["vs_integer_reference"] = {"skipped": str(exc)}
        return result
    result["vs_integer_reference"] = _lsb(tfl, reference, order)
    result["vs_integer_reference"]["per_op"] = _per_op(program, q_nodes, tfl)
    return result


def _integer_program(qdq: onnx.ModelProto) -> Program | str:
    """dsqc's integer program of the QDQ model, or why there is none."""
    from dsqc.integer.program import lower as lower_program

    try:
        return lower_program(qdq)
    except DsqcError as exc:
        log.info("integer reference unavailable for this model: %s", exc)
        return str(exc)


def _program_tensors(program: Program, q_nodes: dict[str, str]) -> dict[str, str]:
    """QuantizeLinear output → the program tensor it is (keyed by the Q's input where that is one)."""
    return {q_out: src if src in program.tensors else q_out for q_out, src in q_nodes.items()}


def _per_op(program: Program, q_nodes: dict[str, str], tfl: dict[str, np.ndarray]) -> dict[str, Any]:
    """Each integer-program op fed LiteRT's own int8 inputs, against LiteRT's output of that op: a
    kernel's rounding shows here as it is, where end to end one tie 1 LSB off grows through a deep net."""
    from dsqc.integer.reference import execute

    env = {t: tfl[q].astype(np.int64) for q, t in _program_tensors(program, q_nodes).items() if q in tfl}
    ops = exact = worst = skipped = 0
    worst_op = ""
    for op in program.ops:
        if op.output not in env or any(name not in env for name in op.inputs):
            skipped += 1  # a tensor LiteRT does not expose (e.g. fused into its producer)
            continue
        want = env[op.output]
        got = execute(op, program, env).reshape(want.shape)
        lsb = int(np.abs(got - want).max(initial=0))
        ops, exact = ops + 1, exact + (lsb == 0)
        if lsb > worst:
            worst, worst_op = lsb, op.node
    return {"ops": ops, "ops_exact": exact, "max_lsb": worst, "worst_op": worst_op, "not_compared": skipped}


def _ort_tensors(qdq: onnx.ModelProto, names: list[str], sample: Feeds) -> dict[str, np.ndarray]:
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    existing = {o.name for o in model.graph.output}
    model.graph.output.extend(onnx.helper.make_tensor_value_info(n, onnx.TensorProto.INT8, None)
                              for n in names if n not in existing)
    return dict(zip(names, session(model, optimize=False).run(names, sample), strict=True))


def _reference_tensors(program: Program, q_nodes: dict[str, str], sample: Feeds) -> dict[str, np.ndarray]:
    """Every tensor of dsqc's integer program keyed by Q output name."""
    from dsqc.integer.reference import quantize_inputs, run

    values = run(program, quantize_inputs(program, sample), keep_all=True)
    return {q: values[t] for q, t in _program_tensors(program, q_nodes).items() if t in values}


def _lsb(got: dict[str, np.ndarray], ref: dict[str, np.ndarray], order: list[str]) -> dict[str, Any]:
    """Differences per tensor; ``first_off`` is the earliest tensor (graph order) that differs, where
    a kernel's own rounding shows before it propagates into later layers."""
    per: dict[str, dict[str, float]] = {}
    for name in [n for n in order if n in got and n in ref]:
        a, b = got[name], np.asarray(ref[name])
        if a.size != b.size:
            continue
        diff = np.abs(a.astype(np.int32).reshape(b.shape) - b.astype(np.int32))
        per[name] = {"max_lsb": int(diff.max(initial=0)), "fraction_off": float(np.mean(diff > 0))}
    if not per:
        return {"tensors": 0}
    ranked = sorted(per, key=lambda n: (-per[n]["max_lsb"], -per[n]["fraction_off"], n))
    worst = ranked[0]
    return {"tensors": len(per), "max_lsb": per[worst]["max_lsb"], "worst_tensor": worst,
            "worst": {n: per[n] for n in ranked[:5]},
            "first_off": next(({"tensor": n, **per[n]} for n in per if per[n]["max_lsb"]), None),
            "tensors_exact": sum(1 for v in per.values() if v["max_lsb"] == 0),
            "tensors_within_1_lsb": sum(1 for v in per.values() if v["max_lsb"] <= 1),
            "mean_fraction_off": float(np.mean([v["fraction_off"] for v in per.values()]))}


def latency(int8_blob: bytes, fp32_blob: bytes, sample: list[np.ndarray], nhwc_in: bool = False,
            ) -> dict[str, Any]:
    """Median ms (1 thread, XNNPACK) of the int8 file and the float32 file of the same graph, timed side
    by side in interleaved rounds (``runtime.compare_latency``): timed one after the other, the two moved
    by ±10 % on a busy 2-core CPU."""
    int8, fp32 = runtime.compare_latency([int8_blob, fp32_blob], sample, nhwc_in)
    return {"int8": int8.wall_ms, "float32": fp32.wall_ms, "speedup": fp32.wall_ms / max(int8.wall_ms, 1e-9),
            "int8_cpu": int8.cpu_ms, "float32_cpu": fp32.cpu_ms,
            "speedup_cpu": fp32.cpu_ms / max(int8.cpu_ms, 1e-9), "threads": 1, "timing": "interleaved"}
