"""``Graph`` → ``.tflite`` bytes through the flatc object API of ``ai_edge_litert.schema_py_generated``.

Schema version 3, identifier ``TFL3``, ``buffers[0]`` the empty sentinel, every constant in its own
buffer aligned to 16 bytes, op versions as the TFLite converter assigns them, an optional SignatureDef.
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np

from .graph import Graph, Tensor
from .schema import builtin_code, op_version, options_type, schema

SCHEMA_VERSION = 3
FILE_IDENTIFIER = b"TFL3"
ALIGNMENT = 16
SIGNATURE_KEY = "serving_default"
TENSOR_TYPES = {"float32": "FLOAT32", "int8": "INT8", "uint8": "UINT8", "int16": "INT16", "int32": "INT32",
                "int64": "INT64", "bool": "BOOL"}


def _aligned_buffer(data: bytes | None) -> Any:
    """A ``BufferT`` whose data vector starts on a 16-byte boundary (the generated Pack does not align)."""
    fb = schema()

    class AlignedBufferT(fb.BufferT):  # type: ignore[name-defined]
        def Pack(self, builder: Any) -> int:
            offset = None
            if data:
                builder.StartVector(1, len(data), ALIGNMENT)
                builder.head -= len(data)
                builder.Bytes[builder.head:builder.head + len(data)] = data
                offset = builder.EndVector()
            fb.BufferStart(builder)
            if offset is not None:
                fb.BufferAddData(builder, offset)
            return int(fb.BufferEnd(builder))

    return AlignedBufferT()


def compact(graph: Graph) -> Graph:
    """Drop tensors no op, input or output refers to; renumber the rest in first-use order."""
    used: list[int] = []
    seen: set[int] = set()
    for idx in [*graph.inputs, *(i for op in graph.ops for i in (*op.inputs, *op.outputs)), *graph.outputs]:
        if idx >= 0 and idx not in seen:
            seen.add(idx)
            used.append(idx)
    remap = {old: new for new, old in enumerate(used)}
    out = Graph(tensors=[graph.tensors[i] for i in used], _names={graph.tensors[i].name for i in used})
    out.inputs = [remap[i] for i in graph.inputs]
    out.outputs = [remap[i] for i in graph.outputs]
    for op in graph.ops:
        out.op(op.kind, [remap[i] if i >= 0 else -1 for i in op.inputs], [remap[i] for i in op.outputs],
               op.options, op.origin)
    return out


def _tensor(fb: Any, t: Tensor, buffer: int) -> Any:
    tt = fb.TensorT()
    tt.name = t.name
    tt.shape = np.asarray(t.shape, np.int32)
    tt.type = int(getattr(fb.TensorType, TENSOR_TYPES[t.dtype]))
    tt.buffer = buffer
    if t.quant is not None:
        q = fb.QuantizationParametersT()
        q.scale = np.asarray(t.quant.scale, np.float32)
        q.zeroPoint = np.asarray(t.quant.zero_point, np.int64)
        q.quantizedDimension = int(t.quant.dim)
        tt.quantization = q
    return tt


def serialize(graph: Graph, signature: bool = True, input_names: list[str] | None = None,
              output_names: list[str] | None = None, description: str = "dsqc") -> bytes:
    """Pack ``graph`` into a TFLite flatbuffer. ``*_names`` are the SignatureDef keys (ONNX names)."""
    fb = schema()
    graph = compact(graph)
    buffers = [_aligned_buffer(None)]
    tensors = []
    for t in graph.tensors:
        if t.data is not None:
            buffers.append(_aligned_buffer(np.ascontiguousarray(t.data).astype(t.data.dtype.newbyteorder("<"))
                                           .tobytes()))
            tensors.append(_tensor(fb, t, len(buffers) - 1))
        else:
            tensors.append(_tensor(fb, t, 0))
    codes: dict[tuple[str, int], int] = {}
    operators = []
    for op in graph.ops:
        key = (op.kind, op_version(op, graph))
        if key not in codes:
            codes[key] = len(codes)
        o = fb.OperatorT()
        o.opcodeIndex = codes[key]
        o.inputs = np.asarray(op.inputs, np.int32)
        o.outputs = np.asarray(op.outputs, np.int32)
        if op.options is not None:
            o.builtinOptionsType = options_type(op.kind)
            o.builtinOptions = op.options
        operators.append(o)
    sub = fb.SubGraphT()
    sub.tensors, sub.operators, sub.name = tensors, operators, "main"
    sub.inputs = np.asarray(graph.inputs, np.int32)
    sub.outputs = np.asarray(graph.outputs, np.int32)
    model = fb.ModelT()
    model.version = SCHEMA_VERSION
    model.description = description
    model.subgraphs, model.buffers = [sub], buffers
    model.operatorCodes = []
    for kind, version in codes:
        code = fb.OperatorCodeT()
        code.builtinCode = builtin_code(kind)
        code.deprecatedBuiltinCode = min(code.builtinCode, 127)
        code.version = version
        model.operatorCodes.append(code)
    if signature:
        model.signatureDefs = [_signature(fb, graph, input_names, output_names)]
    size = 1024 + sum(t.data.nbytes for t in graph.tensors if t.data is not None)
    builder = importlib.import_module("flatbuffers").Builder(size)
    builder.Finish(model.Pack(builder), file_identifier=FILE_IDENTIFIER)
    return bytes(builder.Output())


def _signature(fb: Any, graph: Graph, inputs: list[str] | None, outputs: list[str] | None) -> Any:
    sig = fb.SignatureDefT()
    sig.signatureKey = SIGNATURE_KEY
    sig.subgraphIndex = 0
    sig.inputs = [_map(fb, name, idx) for name, idx in zip(
        inputs or [graph.tensors[i].name for i in graph.inputs], graph.inputs, strict=True)]
    sig.outputs = [_map(fb, name, idx) for name, idx in zip(
        outputs or [graph.tensors[i].name for i in graph.outputs], graph.outputs, strict=True)]
    return sig


def _map(fb: Any, name: str, idx: int) -> Any:
    m = fb.TensorMapT()
    m.name, m.tensorIndex = name, idx
    return m
