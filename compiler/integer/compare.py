"""Compare the integer reference with ONNX Runtime running the QDQ model, in output LSBs."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from dsqc.integer.ops import Program

ORT_LEVELS = ("float_requant", "fused")


def ort_int_outputs(qdq: onnx.ModelProto, program: Program, feeds: Mapping[str, np.ndarray],
                    level: str = "float_requant") -> dict[str, np.ndarray]:
    """ORT's outputs mapped back to int8 codes (each graph output is a DQ of an int8 tensor).

    ``float_requant``: graph optimizations off — every DQ/op/Q runs as written (float requant, round
    half to even). ``fused``: ORT's default optimizations, i.e. its fused int8 kernels.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = (ort.GraphOptimizationLevel.ORT_DISABLE_ALL if level == "float_requant"
                                        else ort.GraphOptimizationLevel.ORT_ENABLE_ALL)
    options.log_severity_level = 3
    session = ort.InferenceSession(qdq.SerializeToString(), options, providers=["CPUExecutionProvider"])
    names = [b.onnx_name for b in program.outputs]
    values = run_in_model_batches(session, names, feeds)
    out: dict[str, np.ndarray] = {}
    for binding, value in zip(program.outputs, values, strict=True):
        info = program.tensors[binding.tensor]
        value = np.asarray(value)
        if value.dtype == np.float32:
            value = np.rint(value.astype(np.float64) / info.scale) + info.zero_point
        out[binding.onnx_name] = np.clip(value, info.qmin, info.qmax).astype(np.int64)
    return out


Stats = dict[str, int | float]


def run_in_model_batches(session: Any, names: list[str], feeds: Mapping[str, np.ndarray],
                         batch: int | None = None) -> list[np.ndarray]:
    """``session.run`` over all samples, in chunks of ``batch`` or else the batch size the model fixes
    (axis 0 of its inputs, e.g. 1 for ``torch.onnx.export`` without dynamic axes), outputs concatenated
    on axis 0."""
    floats = {k: np.asarray(v, np.float32) for k, v in feeds.items()}
    dims = [i.shape[0] for i in session.get_inputs() if i.shape]
    fixed = batch or next((d for d in dims if isinstance(d, int) and d > 0), None)
    total = len(next(iter(floats.values())))
    if fixed is None or fixed == total:
        return [np.asarray(v) for v in session.run(names, floats)]
    chunks = [session.run(names, {k: v[i : i + fixed] for k, v in floats.items()})
              for i in range(0, total - total % fixed, fixed)]
    return [np.concatenate([np.asarray(c[j]) for c in chunks]) for j in range(len(names))]


def lsb_stats(got: Mapping[str, np.ndarray], ref: Mapping[str, np.ndarray]) -> Stats:
    """Histogram of |got − ref| over every output value: counts for 0, 1 and more LSB."""
    diffs = np.concatenate([np.abs(np.asarray(got[k], np.int64) - np.asarray(ref[k], np.int64)).ravel()
                            for k in sorted(ref)])
    total = int(diffs.size)
    return {"values": total, "max_lsb": int(diffs.max(initial=0)),
            "exact": int((diffs == 0).sum()), "off_by_1": int((diffs == 1).sum()),
            "off_by_more": int((diffs > 1).sum()),
            "exact_fraction": round(float((diffs == 0).mean()) if total else 1.0, 6)}


def per_op_with_ort(qdq: onnx.ModelProto, program: Program,
                    feeds: Mapping[str, np.ndarray]) -> dict[str, Stats]:
    """Each op alone: fed ORT's own int8 inputs, compared with ORT's int8 output (graph optimizations
    off). Isolates the rounding of one requantization from the propagation of earlier differences."""
    import onnxruntime as ort

    from dsqc.integer.reference import execute

    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    zp_type = {i.name: i.data_type for i in model.graph.initializer}
    q_out, q_type = {}, {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear":
            q_out[node.input[0]] = node.output[0]
            zp = node.input[2] if len(node.input) > 2 else ""
            q_type[node.output[0]] = zp_type.get(zp, onnx.TensorProto.UINT8)
    graph_names = {t.name for t in model.graph.input} | {o for n in model.graph.node for o in n.output}
    made = {name for name in program.tensors  # tensors only the program has (a Concat's constant part)
            if name not in program.q_outputs and name not in q_out and name not in graph_names}
    names = [name for name in program.tensors if name not in made]
    wanted = [program.q_outputs.get(name) or q_out.get(name, name) for name in names]
    known = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in known:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, q_type[name], None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    # one sample a run where the program moves axis 0: a batch would interleave on the sequence axis
    values = run_in_model_batches(session, wanted, feeds, batch=None if program.batched else 1)
    # int16 holds every code (uint8 shifted to int8); int64 only for the op at hand (memory: Swin-T)
    ints = {name: np.asarray(v, np.int16) - (128 if np.asarray(v).dtype == np.uint8 else 0)
            for name, v in zip(names, values, strict=True)}
    del values
    count = len(next(iter(feeds.values())))
    stats: dict[str, Stats] = {}
    for op in program.ops:
        shape = program.tensors[op.output].shape
        inputs = {n: ints[n].astype(np.int64) for n in op.inputs}
        if program.batched:
            got = execute(op, program, inputs)
        else:  # one sample at a time, as the reference runs such a program
            samples = {n: v.reshape(-1, *program.tensors[n].shape) for n, v in inputs.items()}
            got = np.stack([execute(op, program, {n: v[i] for n, v in samples.items()})
                            for i in range(count)])
        if op.output in made:  # no ORT value to compare: the next op reads the reference's
            ints[op.output] = got.reshape(-1, *shape[1:]).astype(np.int16)
            continue
        stats[op.node] = lsb_stats({"x": got}, {"x": ints[op.output].reshape(got.shape)})
    return stats


def compare_with_ort(qdq: onnx.ModelProto, program: Program, feeds: Mapping[str, np.ndarray],
                     ref: Mapping[str, np.ndarray]) -> dict[str, dict[str, Any]]:
    """LSB statistics of the reference's int8 outputs against ORT at both optimization levels. Where ORT
    cannot build its optimized session (1.32's MatMul → Gemm rewrite of an opset-21 QDQ graph writes a
    QuantizeLinear whose zero point has the wrong type) the fused level holds ``error`` instead."""
    unfused = lsb_stats(ort_int_outputs(qdq, program, feeds, "float_requant"), ref)
    stats: dict[str, dict[str, Any]] = {"float_requant": unfused}
    try:
        stats["fused"] = lsb_stats(ort_int_outputs(qdq, program, feeds, "fused"), ref)
    except Exception as exc:  # onnxruntime's own exception types; the unfused run is the reference
        stats["fused"] = {"error": (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]}
    return stats
