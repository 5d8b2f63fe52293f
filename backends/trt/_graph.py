"""Read-only index of an ONNX graph for the TensorRT checker and cache: producers, readers, constants."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto

from dsqc.ir import DEFAULT_DOMAINS, ProtoIndex
from dsqc.op_kinds import COMPUTE_OPS, CONV_OPS, QDQ_OPS

# Ops TensorRT folds into the kernel of the Conv/Gemm before them.
FOLDED = frozenset({"BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Elu", "Selu",
                    "Softplus", "HardSigmoid", "HardSwish", "PRelu"})
# Ops that take int8 inputs in TensorRT (fused, or Q/DQ moved through them). Add only as the skip
# input of a Conv+Add residual (see ``conv_residual``).
INT8_READERS = frozenset({*COMPUTE_OPS, *QDQ_OPS, "Add", "MaxPool", "AveragePool", "GlobalAveragePool",
                          "GlobalMaxPool", "Concat", "Reshape", "Transpose", "Flatten", "Squeeze",
                          "Unsqueeze", "Slice", "Gather", "Resize", "Split", "Pad", "Identity", "Relu",
                          "Expand", "Tile", "DepthToSpace", "SpaceToDepth"})
FLOAT_ONLY = frozenset({"Softmax", "LayerNormalization"})


def node_label(node: onnx.NodeProto) -> str:
    """The node's name, or ``<op>(<first output>)`` for unnamed nodes."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else '?'})"


class GraphIndex(ProtoIndex):
    """Producers, readers and constant values of one model's top-level graph, its opset and outputs."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        super().__init__(proto.graph)
        self.opset = next((int(o.version) for o in proto.opset_import if o.domain in DEFAULT_DOMAINS), 0)
        self.outputs = {o.name for o in proto.graph.output}

    def scale(self, node: onnx.NodeProto) -> np.ndarray | None:
        return self.const(node.input[1]) if len(node.input) > 1 else None

    def zero_point(self, node: onnx.NodeProto) -> np.ndarray | None:
        return self.const(node.input[2]) if len(node.input) > 2 and node.input[2] else None

    @staticmethod
    def attr(node: onnx.NodeProto, name: str, default: int) -> int:
        return next((int(a.i) for a in node.attribute if a.name == name), default)

    def quant_type(self, node: onnx.NodeProto, depth: int = 0) -> int | None:
        """ONNX element type of the quantized side of a Q/DQ node, or ``None`` when unknown."""
        if len(node.input) > 2 and node.input[2]:
            return self.elem_type(node.input[2])
        if node.op_type == "QuantizeLinear":
            return self.attr(node, "output_dtype", 0) or TensorProto.UINT8
        if self.is_const(node.input[0]):
            return self.elem_type(node.input[0])
        src = self.producer(node.input[0])
        if src is not None and src.op_type == "QuantizeLinear" and depth < 2:
            return self.quant_type(src, depth + 1)
        return None


def conv_residual(index: GraphIndex, add: onnx.NodeProto, slot: int) -> bool:
    """Whether input ``slot`` of Add ``add`` is the skip of a Conv+Add residual TensorRT can fuse:
    another input comes straight from a Conv/ConvTranspose (or its BatchNormalization)."""
    for other, name in enumerate(add.input):
        src = index.producer(name) if other != slot else None
        if src is not None and src.op_type == "BatchNormalization":
            src = index.producer(src.input[0])
        if src is not None and src.op_type in CONV_OPS:
            return True
    return False
