"""``check_trt``: TensorRT's explicit-quantization rules, checked on any QDQ ONNX model.

Errors are what TensorRT rejects or computes differently from ONNX (non-zero zero points, types
other than int8, per-channel axes off the output channel, bad scales, Q→Q chains, requantizing
DQ→Q pairs, too old an opset). Warnings are Q/DQ that TensorRT accepts but cannot fuse into a
kernel, so they only add reformats (between a Conv and the activation it folds, on the Conv branch
of a residual Add, around Softmax/LayerNorm or ops with no int8 kernel).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto

from dsqc.op_kinds import (
    COMPUTE_OPS,
    CONV_OPS,
    MATRIX_OPS,
    QDQ_OPS,
    WEIGHT_INPUT,
    weight_output_axis,
    weight_reduction_axis,
)

from ._graph import FLOAT_ONLY, FOLDED, INT8_READERS, GraphIndex, conv_residual, node_label


@dataclass(frozen=True)
class Finding:
    """One rule broken by one node. ``severity`` is ``"error"`` or ``"warning"``."""

    node: str
    rule: str
    message: str
    severity: str = "error"


def check_trt(proto: onnx.ModelProto, allow_float_qdq: Iterable[str] = ()) -> list[Finding]:
    """Check ``proto`` against TensorRT's Q/DQ rules; ``allow_float_qdq``: op types (e.g. Softmax)
    whose Q/DQ inputs were asked for and must not be reported."""
    index = GraphIndex(proto)
    allowed = set(allow_float_qdq)
    findings: list[Finding] = []
    qdq_nodes = [n for n in proto.graph.node if n.op_type in QDQ_OPS]
    if index.opset < 13:
        findings.append(Finding("(model)", "opset", f"default opset {index.opset} < 13: per-channel "
                                "Q/DQ and TensorRT's Q/DQ import need opset 13 or newer"))
    if not qdq_nodes:
        findings.append(Finding("(model)", "no-qdq", "no QuantizeLinear/DequantizeLinear: TensorRT 11 "
                                "builds this model without INT8", "warning"))
    for node in qdq_nodes:
        findings.extend(_check_qparams(index, node))
        findings.extend(_check_chain(index, node))
        if node.op_type == "DequantizeLinear":
            findings.extend(_check_weight_axis(index, node))
            findings.extend(_check_fusion(index, node, allowed))
        elif _size(index.scale(node)) > 1 and not index.is_const(node.input[0]):
            findings.append(Finding(node_label(node), "axis", "per-channel quantization of an activation: "
                                    "TensorRT quantizes activations per tensor"))
    return findings


def _size(values: np.ndarray | None) -> int:
    return 0 if values is None else int(values.size)


def format_findings(findings: list[Finding]) -> str:
    """One line per finding, errors first, then a count; ``clean`` when there is nothing to say."""
    if not findings:
        return "clean: no TensorRT Q/DQ rule broken"
    ordered = sorted(findings, key=lambda f: (f.severity != "error", f.rule, f.node))
    width = max(len(f.node) for f in ordered)
    lines = [f"{f.severity:<7} {f.node:<{width}}  [{f.rule}] {f.message}" for f in ordered]
    errors = sum(f.severity == "error" for f in findings)
    lines.append(f"{errors} error(s), {len(findings) - errors} warning(s)")
    return "\n".join(lines)


def _check_qparams(index: GraphIndex, node: onnx.NodeProto) -> list[Finding]:
    label, out = node_label(node), []
    scale = index.scale(node)
    if scale is None:
        out.append(Finding(label, "scale", "scale is not a constant: TensorRT needs build-time scales"))
    elif scale.size == 0 or not np.all(np.isfinite(scale.astype(np.float64))) or np.any(scale <= 0):
        out.append(Finding(label, "scale", f"scale must be positive and finite (min {np.min(scale)!r})"))
    has_zero = len(node.input) > 2 and bool(node.input[2])
    zero = index.zero_point(node)
    if has_zero and zero is None:
        out.append(Finding(label, "zero-point", "zero point is not a constant"))
    elif zero is not None and np.any(zero.astype(np.float64) != 0):
        out.append(Finding(label, "zero-point", f"zero point {zero.ravel()[0]} ≠ 0: TensorRT quantization "
                           "is symmetric"))
    qtype = index.quant_type(node)
    block = index.attr(node, "block_size", 0)
    if qtype == TensorProto.INT4:
        out.extend(_check_int4(index, node, block))
    elif qtype == TensorProto.FLOAT8E4M3FN:
        out.append(Finding(label, "dtype", "FP8 Q/DQ: needs an FP8-capable GPU (Ada/Hopper or newer)",
                           "warning"))
    elif qtype not in (None, TensorProto.INT8):
        name = TensorProto.DataType.Name(qtype).lower()
        if not has_zero and qtype == TensorProto.UINT8:
            out.append(Finding(label, "dtype", "no zero point: ONNX (and ONNX Runtime) quantize to uint8, "
                               "TensorRT to int8, so results differ; give an int8 zero point 0"))
        else:
            out.append(Finding(label, "dtype", f"{name} Q/DQ: TensorRT takes int8 (int4 only for constant "
                               "blockwise MatMul/Gemm weights)"))
    if block and index.opset < 21:
        out.append(Finding(label, "opset", f"block_size needs opset 21 (model has {index.opset})"))
    return out


def _check_int4(index: GraphIndex, node: onnx.NodeProto, block: int) -> list[Finding]:
    label = node_label(node)
    weight_of = [r for r, i in index.readers(node.output[0]) if r.op_type in MATRIX_OPS and i == 1]
    weight = index.const(node.input[0])
    if node.op_type != "DequantizeLinear" or weight is None or not block or not weight_of:
        return [Finding(label, "dtype", "int4 is weight-only in TensorRT: a DequantizeLinear with "
                        "block_size on a constant MatMul/Gemm weight")]
    if weight.ndim and weight.shape[-1] % 2:
        return [Finding(label, "dtype", f"int4 weight with odd last dimension {weight.shape[-1]}: "
                        "TensorRT packs int4 in pairs along it")]
    return []


def _check_chain(index: GraphIndex, node: onnx.NodeProto) -> list[Finding]:
    src = index.producer(node.input[0])
    label = node_label(node)
    if src is None or src.op_type not in QDQ_OPS:
        return []
    if src.op_type == node.op_type:
        kind = "Q→Q" if node.op_type == "QuantizeLinear" else "DQ→DQ"
        return [Finding(label, "qdq-chain", f"{kind} chain after '{node_label(src)}': quantizing twice")]
    if node.op_type == "QuantizeLinear":
        same = _same_qparams(index, src, node)
        if not same:
            return [Finding(label, "requantize", f"DQ '{node_label(src)}' → Q with a different scale and "
                            "no op between: a standalone requantization TensorRT cannot fuse")]
        return [Finding(label, "requantize", f"DQ '{node_label(src)}' → Q with the same scale around "
                        "nothing: a redundant pair", "warning")]
    return []


def _same_qparams(index: GraphIndex, a: onnx.NodeProto, b: onnx.NodeProto) -> bool:
    sa, sb = index.scale(a), index.scale(b)
    za, zb = index.zero_point(a), index.zero_point(b)
    return (sa is not None and sb is not None and np.array_equal(sa, sb)
            and np.array_equal(np.asarray(0 if za is None else za), np.asarray(0 if zb is None else zb)))


def _check_weight_axis(index: GraphIndex, node: onnx.NodeProto) -> list[Finding]:
    scale = index.scale(node)
    weight = index.const(node.input[0])
    if scale is None or scale.size <= 1 or weight is None:
        return []
    rank = weight.ndim
    axis = index.attr(node, "axis", 1)
    axis = axis + rank if axis < 0 else axis
    block = index.attr(node, "block_size", 0)
    out: list[Finding] = []
    if not any(a.name == "axis" for a in node.attribute):
        out.append(Finding(node_label(node), "axis", "per-channel DQ without an axis attribute: ONNX "
                           "means axis 1, TensorRT's parser uses axis 0; set it explicitly"))
    for reader, slot in index.readers(node.output[0]):
        want = _expected_axis(reader, slot, rank, blockwise=bool(block))
        if want is not None and axis != want:
            what = "blockwise K" if block else "per-channel output-channel"
            out.append(Finding(node_label(node), "axis", f"{what} axis of the weight of {reader.op_type} "
                               f"'{node_label(reader)}' is {want}, this DQ uses axis {axis}"))
    return out


def _expected_axis(reader: onnx.NodeProto, slot: int, rank: int, blockwise: bool) -> int | None:
    if slot != WEIGHT_INPUT.get(reader.op_type):
        return None
    if blockwise:
        return weight_reduction_axis(reader, rank) if reader.op_type in MATRIX_OPS and rank >= 2 else None
    return weight_output_axis(reader, rank)


def _check_fusion(index: GraphIndex, node: onnx.NodeProto, allowed: set[str]) -> list[Finding]:
    """Warnings for a DQ whose Q/DQ pair sits where TensorRT has no fused int8 kernel."""
    if index.is_const(node.input[0]):
        return []
    label, out = node_label(node), []
    q = index.producer(node.input[0])
    quantized = q.input[0] if q is not None and q.op_type == "QuantizeLinear" else ""
    source = index.producer(quantized) if quantized else None
    for reader, slot in index.readers(node.output[0]):
        rop, rlabel = reader.op_type, node_label(reader)
        if source is not None and source.op_type in (*COMPUTE_OPS, "BatchNormalization") and rop in FOLDED:
            out.append(Finding(label, "fusion", f"Q/DQ between {source.op_type} '{node_label(source)}' and "
                               f"{rop} '{rlabel}': TensorRT folds the {rop} into the kernel; quantize "
                               f"after the {rop}", "warning"))
        elif (source is not None and source.op_type in CONV_OPS and rop == "Add"
              and _only_reader(index, quantized, reader)):
            out.append(Finding(label, "fusion", f"Q/DQ on the {source.op_type} branch of residual Add "
                               f"'{rlabel}': Conv+Add fuse only when just the skip input is quantized",
                               "warning"))
        elif rop in allowed:
            continue
        elif rop == "Add" and not conv_residual(index, reader, slot):
            out.append(Finding(label, "fusion", f"DQ into Add '{rlabel}', which has no Conv input to fuse "
                               "with: TensorRT runs it in float, the pair only adds a reformat", "warning"))
        elif rop in FLOAT_ONLY:
            out.append(Finding(label, "fusion", f"Q/DQ into {rop} '{rlabel}': TensorRT runs {rop} in "
                               "FP16/FP32, the pair only adds a reformat (leave it out unless asked)",
                               "warning"))
        elif rop not in INT8_READERS:
            out.append(Finding(label, "fusion", f"DQ feeds {rop} '{rlabel}', which has no int8 kernel in "
                               "TensorRT: the Q/DQ pair only adds a reformat", "warning"))
    return out


def _only_reader(index: GraphIndex, tensor: str, node: onnx.NodeProto) -> bool:
    """Whether ``node`` is the one consumer of ``tensor``, looking through its Q → DQ pairs."""
    consumers: list[onnx.NodeProto] = []
    for reader, _ in index.readers(tensor):
        if reader.op_type != "QuantizeLinear":
            consumers.append(reader)
            continue
        for dq, _ in index.readers(reader.output[0]):
            if dq.op_type == "DequantizeLinear":
                consumers.extend(r for r, _ in index.readers(dq.output[0]))
            else:
                consumers.append(dq)
    return all(c is node for c in consumers)
