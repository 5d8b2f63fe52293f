"""TFLite schema glue: builtin option tables and the op versions the TFLite converter would write.

``ai_edge_litert`` is imported lazily so that ``dsqc --help`` never loads it.
"""

from __future__ import annotations

import importlib
from functools import cache
from types import ModuleType
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .graph import Graph, Op

# Builtin op → name of its options table (None: the op takes no options).
OPTIONS: dict[str, str | None] = {
    "CONV_2D": "Conv2DOptions", "DEPTHWISE_CONV_2D": "DepthwiseConv2DOptions",
    "TRANSPOSE_CONV": "TransposeConvOptions", "FULLY_CONNECTED": "FullyConnectedOptions",
    "BATCH_MATMUL": "BatchMatMulOptions", "ADD": "AddOptions", "SUB": "SubOptions", "MUL": "MulOptions",
    "DIV": "DivOptions", "MEAN": "ReducerOptions", "SUM": "ReducerOptions",
    "AVERAGE_POOL_2D": "Pool2DOptions", "MAX_POOL_2D": "Pool2DOptions",
    "CONCATENATION": "ConcatenationOptions", "RESHAPE": "ReshapeOptions", "SQUEEZE": "SqueezeOptions",
    "TRANSPOSE": "TransposeOptions", "PAD": "PadOptions", "PADV2": "PadV2Options",
    "RESIZE_BILINEAR": "ResizeBilinearOptions", "RESIZE_NEAREST_NEIGHBOR": "ResizeNearestNeighborOptions",
    "SOFTMAX": "SoftmaxOptions", "GATHER": "GatherOptions", "HARD_SWISH": "HardSwishOptions",
    "GELU": "GeluOptions", "SQUARED_DIFFERENCE": "SquaredDifferenceOptions",
    "STRIDED_SLICE": "StridedSliceOptions", "SLICE": "SliceOptions", "EXP": "ExpOptions",
    "MAXIMUM": "MaximumMinimumOptions", "MINIMUM": "MaximumMinimumOptions", "POW": "PowOptions",
    "LEAKY_RELU": "LeakyReluOptions", "SPLIT": "SplitOptions", "SPLIT_V": "SplitVOptions",
    "QUANTIZE": None, "DEQUANTIZE": None,
    "LOGISTIC": None, "TANH": None, "RELU": None, "RELU6": None, "RELU_N1_TO_1": None, "RSQRT": None,
    "SQRT": None, "ABS": None, "NEG": None, "CAST": "CastOptions", "LOGICAL_AND": "LogicalAndOptions",
    "LOGICAL_OR": "LogicalOrOptions", "BROADCAST_TO": "BroadcastToOptions", "SELECT_V2": "SelectV2Options",
}
ACTIVATIONS = {"NONE": 0, "RELU": 1, "RELU_N1_TO_1": 2, "RELU6": 3}
# Ops whose int8 kernels are version 2 (converter's rule: int8 input → 2, else 1).
_INT8_V2 = {"ADD", "AVERAGE_POOL_2D", "MAX_POOL_2D", "TRANSPOSE", "CONCATENATION", "PAD", "PADV2",
            "SOFTMAX", "MEAN", "RELU", "RELU6", "TANH", "LOGISTIC", "GATHER", "STRIDED_SLICE", "SLICE",
            "MAXIMUM", "MINIMUM", "BATCH_MATMUL", "SUB", "DEQUANTIZE", "RESIZE_BILINEAR",
            "RESIZE_NEAREST_NEIGHBOR", "LEAKY_RELU", "RSQRT", "GELU",
            "SPLIT_V"}


@cache
def schema() -> ModuleType:
    return importlib.import_module("ai_edge_litert.schema_py_generated")


def options(kind: str, **fields: Any) -> Any:
    """A fresh ``*OptionsT`` for ``kind`` with ``fields`` set (every field must exist)."""
    table = OPTIONS[kind]
    if table is None:
        if fields:
            raise ValueError(f"{kind} takes no options")
        return None
    obj = getattr(schema(), f"{table}T")()
    for key, value in fields.items():
        if not hasattr(obj, key):
            raise AttributeError(f"{table} has no field {key}")
        setattr(obj, key, value)
    return obj


def options_type(kind: str) -> int:
    table = OPTIONS.get(kind)
    return 0 if table is None else int(getattr(schema().BuiltinOptions, table))


def builtin_code(kind: str) -> int:
    return int(getattr(schema().BuiltinOperator, kind))


def op_version(op: Op, graph: Graph) -> int:
    """The version the TFLite converter assigns (tensorflow/lite/tools/versioning/op_version.cc)."""
    first = graph.tensors[op.inputs[0]].dtype if op.inputs and op.inputs[0] >= 0 else "float32"
    from .dynamic import hybrid_version

    hybrid = hybrid_version(op.kind, graph, op.inputs)
    if hybrid is not None:
        return hybrid
    int8 = first == "int8"
    opts = op.options
    if op.kind in ("CONV_2D", "DEPTHWISE_CONV_2D"):
        if int8:
            return 3
        dilated = opts is not None and (opts.dilationWFactor != 1 or opts.dilationHFactor != 1)
        return 2 if op.kind == "DEPTHWISE_CONV_2D" and dilated else 1
    if op.kind == "FULLY_CONNECTED":
        if len(op.inputs) == 2 or (len(op.inputs) > 2 and op.inputs[2] < 0):
            return 6
        return 5 if opts.keepNumDims else 4 if int8 else 1
    if op.kind == "TRANSPOSE_CONV":
        if opts is not None and opts.fusedActivationFunction:
            return 4
        return 3 if len(op.inputs) == 4 and op.inputs[3] >= 0 else 2 if graph.tensors[op.inputs[1]].dtype \
            == "int8" else 1
    if op.kind == "MUL" and int8:
        s = [graph.tensors[i].quant for i in (*op.inputs[:2], op.outputs[0])]
        if all(q is not None for q in s):
            ratio = float(s[0].scale[0]) * float(s[1].scale[0]) / float(s[2].scale[0])  # type: ignore[union-attr]
            return 3 if ratio >= 1.0 else 2
        return 2
    if op.kind == "DEQUANTIZE" and int8:
        quant = graph.tensors[op.inputs[0]].quant
        return 5 if quant is not None and not quant.per_tensor else 2
    if op.kind in ("RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR") and opts is not None and (
            opts.halfPixelCenters or (op.kind == "RESIZE_NEAREST_NEIGHBOR" and opts.alignCorners)):
        return 3
    if op.kind in _INT8_V2 and int8:
        return 2
    return 1
