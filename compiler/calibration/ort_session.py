"""An ONNX Runtime CPU session that returns chosen intermediate tensors of an in-memory model.

The weights are not serialized with the graph: every initializer of 1 KiB or more goes to ORT as an
in-memory external-data "file" (``add_external_initializers_from_files_in_memory``). That skips a
full protobuf serialization and parse of the weights (about half of the session set-up time on a
ResNet) and lifts the 2 GB protobuf limit. The caller's model is never modified.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import onnx

from ..errors import ModelError

SPIN = False  # calibration sessions: idle ORT workers sleep (see output_session)
IN_MEMORY_WEIGHTS = True  # False: serialize the weights with the graph (as ORT without that API needs)
_INLINE_BYTES = 1024  # smaller initializers stay in the graph (shape constants must be readable)


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (ORT messages run long)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _graph_without_weights(
    proto: onnx.ModelProto, outputs: Sequence[str], types: dict[str, int]
) -> tuple[onnx.ModelProto, list[str], list[bytes]]:
    src = proto.graph
    model = onnx.ModelProto()
    model.ir_version = proto.ir_version
    model.opset_import.extend(proto.opset_import)
    model.functions.extend(proto.functions)
    graph = model.graph
    graph.name = src.name
    graph.node.extend(src.node)
    graph.input.extend(src.input)
    graph.value_info.extend(src.value_info)
    graph.sparse_initializer.extend(src.sparse_initializer)
    for name in outputs:
        vi = graph.output.add()
        vi.name = name
        if name in types:  # element type only: stored shapes may pin a batch size
            vi.type.tensor_type.elem_type = types[name]
    files: list[str] = []
    buffers: list[bytes] = []
    for i, init in enumerate(src.initializer):
        raw = init.raw_data if init.data_location != onnx.TensorProto.EXTERNAL else b""
        if len(raw) < _INLINE_BYTES:
            graph.initializer.append(init)
            continue
        stub = graph.initializer.add()
        stub.name, stub.data_type = init.name, init.data_type
        stub.dims.extend(init.dims)
        stub.data_location = onnx.TensorProto.EXTERNAL
        fname = f"dsqc-weight-{i}.bin"
        for key, value in (("location", fname), ("offset", "0"), ("length", str(len(raw)))):
            entry = stub.external_data.add()
            entry.key, entry.value = key, value
        files.append(fname)
        buffers.append(raw)
    return model, files, buffers


def output_session(proto: onnx.ModelProto, outputs: Sequence[str], types: dict[str, int]) -> Any:
    """A CPU session of ``proto`` whose graph outputs are exactly ``outputs``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not SPIN:  # idle ORT workers sleep instead of spinning: the observer thread gets the core
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    if IN_MEMORY_WEIGHTS and hasattr(opts, "add_external_initializers_from_files_in_memory"):
        model, files, buffers = _graph_without_weights(proto, outputs, types)
        if files:
            opts.add_external_initializers_from_files_in_memory(files, buffers, [len(b) for b in buffers])
    else:  # older ORT: serialize everything
        model = onnx.ModelProto()
        model.CopyFrom(proto)
        del model.graph.output[:]
        for name in outputs:
            vi = model.graph.output.add()
            vi.name = name
            if name in types:
                vi.type.tensor_type.elem_type = types[name]
    try:
        return ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        raise ModelError(f"ONNX Runtime cannot load the model for calibration: {first_line(exc)}") from None
