"""dsqc's integer program: QDQ ONNX lowered to int8 tensors, int32 accumulation and fixed-point
requantization (one rounding rule, see ``fixedpoint``), and its numpy reference interpreter."""

from dsqc.integer.fixedpoint import ROUNDING_RULE, Multiplier, quantize_multiplier, requantize
from dsqc.integer.ops import (
    AddConstantOp,
    AddOp,
    ConcatOp,
    ConstantOp,
    ConvOp,
    DenseOp,
    ElementwiseOp,
    IOBinding,
    LayerNormOp,
    LookupOp,
    MatMulOp,
    MulOp,
    Op,
    PoolOp,
    Program,
    Requant,
    SliceOp,
    SoftmaxOp,
    TensorInfo,
    TransposeOp,
    UpsampleOp,
)
from dsqc.integer.program import MissingLowerings, lower
from dsqc.integer.reference import dequantize_outputs, quantize_inputs, run

__all__ = [
    "ROUNDING_RULE", "AddConstantOp", "AddOp", "ConcatOp", "ConstantOp", "ConvOp", "DenseOp",
    "ElementwiseOp", "IOBinding", "LayerNormOp", "LookupOp", "MatMulOp", "MissingLowerings", "MulOp",
    "Multiplier", "Op", "PoolOp", "Program", "Requant", "SliceOp", "SoftmaxOp", "TensorInfo", "TransposeOp",
    "UpsampleOp", "dequantize_outputs", "lower", "quantize_inputs", "quantize_multiplier", "requantize",
    "run",
]
