"""Read-only index of an ONNX graph for the TensorRT checker and cache: producers, readers, constants."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Ops TensorRT folds into the kernel of the Conv/Gemm before them.
FOLDED = frozenset({"BatchNormalization", "Relu", "LeakyRelu", "Clip", "Sigmoid", "Tanh", "Elu", "Selu",
                    "Softplus", "HardSigmoid", "HardSwish", "PRelu"})
# Ops that take int8 inputs in TensorRT (fused, or Q/DQ moved through them). Add only as the skip
# input of a Conv+Add residual (see ``conv_residual``).
INT8_READERS = frozenset({*COMPUTE, *QDQ_OPS, "Add", "MaxPool", "AveragePool", "GlobalAveragePool",
                          "GlobalMaxPool", "Concat", "Reshape", "Transpose", "Flatten", "Squeeze",
                          "Unsqueeze", "Slice", "Gather", "Resize", "Split", "Pad", "Identity", "Relu",
                          "Expand", "Tile", "DepthToSpace", "SpaceToDepth"})
FLOAT_ONLY = frozenset({"Softmax", "LayerNormalization"})


def node_label(node: onnx.NodeProto) -> str:
    """The node's name, or ``<op>(<first output>)`` for unnamed nodes."""
    return node.name or f"{node.op_type}({node.output[0] if node.output else '?'})"


class GraphIndex:
    """Producers, readers and constant values of one model's top-level graph."""

    def __init__(self, proto: onnx.ModelProto) -> None:
        graph = proto.graph
        self.opset = next((int(o.version) for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
        self.outputs = {o.name for o in graph.output}
        self._tensors: dict[str, TensorProto] = {t.name: t for t in graph.initializer}
        self._producer: dict[str, onnx.NodeProto] = {}
        self._readers: dict[str, list[tuple[onnx.NodeProto, int]]] = {}
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in ("", "ai.onnx"):
                value = next((a.t for a in node.attribute if a.name == "value"), None)
                if value is not None:
                    self._tensors[node.output[0]] = value
            for name in node.output:
                self._producer[name] = node
            for slot, name in enumerate(node.input):
                if name:
                    self._readers.setdefault(name, []).append((node, slot))

    def producer(self, name: str) -> onnx.NodeProto | None:
        return self._producer.get(name)

    def readers(self, name: str) -> list[tuple[onnx.NodeProto, int]]:
        return self._readers.get(name, [])

    def is_const(self, name: str) -> bool:
        return name in self._tensors

    def const(self, name: str) -> np.ndarray | None:
        tensor = self._tensors.get(name)
        return None if tensor is None else numpy_helper.to_array(tensor)

    def elem_type(self, name: str) -> int | None:
        tensor = self._tensors.get(name)
        return None if tensor is None else int(tensor.data_type)

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
        if src is not None and src.op_type in ("Conv", "ConvTranspose"):
            return True
    return False
