"""``dsqc inspect``: what is in a model (ops, parameters, opset, I/O, quantized or not)."""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from dsqc.ir import default_opset
from dsqc.op_kinds import QDQ_OPS
from dsqc.quant.run_time_scales import REDUCED_AXES

# Ops whose presence makes a model quantized already.
QUANTIZED_OPS = {*QDQ_OPS, "QLinearConv", "QLinearMatMul", "MatMulInteger", "ConvInteger",
                 "DynamicQuantizeLinear", "MatMulNBits", *REDUCED_AXES}


@dataclass
class ModelSummary:
    opset: int
    nodes: int
    op_histogram: dict[str, int]
    parameters: int
    parameter_bytes: int
    inputs: list[dict[str, Any]]
    outputs: list[dict[str, Any]]
    quantized: bool
    initializer_dtypes: dict[str, int]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def summarize(proto: onnx.ModelProto) -> ModelSummary:
    hist: dict[str, int] = {}
    for node in proto.graph.node:
        hist[node.op_type] = hist.get(node.op_type, 0) + 1
    params = nbytes = 0
    dtypes: dict[str, int] = {}
    for init in proto.graph.initializer:
        arr = numpy_helper.to_array(init)
        params += int(arr.size)
        nbytes += _stored_bytes(init, arr)
        key = onnx.helper.tensor_dtype_to_np_dtype(init.data_type).name
        key = onnx.TensorProto.DataType.Name(init.data_type).lower() if key == "object" else key
        dtypes[key] = dtypes.get(key, 0) + int(arr.size)
    quantized = any(op in QUANTIZED_OPS for op in hist)
    return ModelSummary(
        opset=default_opset(proto), nodes=len(proto.graph.node),
        op_histogram=dict(sorted(hist.items(), key=lambda kv: (-kv[1], kv[0]))),
        parameters=params, parameter_bytes=nbytes,
        inputs=[_value_info(v) for v in proto.graph.input
                if v.name not in {i.name for i in proto.graph.initializer}],
        outputs=[_value_info(v) for v in proto.graph.output],
        quantized=quantized, initializer_dtypes=dict(sorted(dtypes.items())))


def _stored_bytes(init: onnx.TensorProto, arr: np.ndarray) -> int:
    if init.data_type in (onnx.TensorProto.INT4, onnx.TensorProto.UINT4):
        return (int(arr.size) + 1) // 2
    return int(arr.nbytes)


def _value_info(value: onnx.ValueInfoProto) -> dict[str, Any]:
    ttype = value.type.tensor_type
    dims: list[int | str] = [d.dim_param if d.dim_param else d.dim_value for d in ttype.shape.dim]
    return {"name": value.name, "dtype": onnx.TensorProto.DataType.Name(ttype.elem_type).lower(),
            "shape": dims}


def format_summary(summary: ModelSummary, label: str) -> str:
    lines = [f"{label}", f"  opset {summary.opset}, {summary.nodes} nodes, "
             f"{summary.parameters:,} parameters ({summary.parameter_bytes / 1e6:.3f} MB), "
             f"{'quantized' if summary.quantized else 'float'}"]
    for kind, items in (("input", summary.inputs), ("output", summary.outputs)):
        for item in items:
            lines.append(f"  {kind:6s} {item['name']}: {item['dtype']} {item['shape']}")
    lines.append("  ops: " + ", ".join(f"{op}×{n}" for op, n in summary.op_histogram.items()))
    return "\n".join(lines)
