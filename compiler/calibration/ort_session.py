"""An ONNX Runtime CPU session that returns chosen intermediate tensors of an in-memory model.

The weights are not serialized with the graph. Every initializer of 1 KiB or more is written, one
tensor at a time, to a page-aligned ``weights.bin`` in a private temporary folder, and the session
is built from a small graph whose initializers point there as external data. ONNX Runtime memory-maps
that file: weights it uses as they are (most of them, below the NCHWc level) are never copied into
the heap, and no second full copy of the weights ever exists in this process. That keeps the peak
memory of calibration close to a plain inference session's (the bench measures it), and lifts the
2 GB protobuf limit. The folder is removed when the session is garbage collected. The caller's model
is never modified. If no temporary folder can be written, the weights are handed to ORT in memory.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import weakref
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import onnx

from dsqc.errors import ModelError

log = logging.getLogger(__name__)

SPIN = False  # calibration sessions: idle ORT workers sleep (see output_session)
SPILL_WEIGHTS = True  # False: weights go to ORT as in-memory buffers (one extra copy while building)
_INLINE_BYTES = 1024  # smaller initializers stay in the graph (shape constants must be readable)
_PAGE = 4096  # weights start on page boundaries so ORT can map each one directly
_WEIGHTS = "weights.bin"


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (ORT messages run long)."""
    text = str(exc).strip().splitlines()
    return text[0] if text else type(exc).__name__


def _skeleton(proto: onnx.ModelProto, outputs: Sequence[str], types: dict[str, int]) -> onnx.ModelProto:
    """``proto`` without initializers and with exactly ``outputs`` as graph outputs."""
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
    return model


def _stub(graph: onnx.GraphProto, init: onnx.TensorProto, location: str, offset: int, length: int) -> None:
    stub = graph.initializer.add()
    stub.name, stub.data_type = init.name, init.data_type
    stub.dims.extend(init.dims)
    stub.data_location = onnx.TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", str(offset)), ("length", str(length))):
        entry = stub.external_data.add()
        entry.key, entry.value = key, value


def _is_inline(init: onnx.TensorProto) -> bool:
    return init.data_location == onnx.TensorProto.EXTERNAL or init.ByteSize() < _INLINE_BYTES


def _spill(proto: onnx.ModelProto, model: onnx.ModelProto, folder: Path) -> None:
    """Write the large initializers to ``folder/weights.bin`` (page aligned) and stub them in ``model``."""
    offset = 0
    with (folder / _WEIGHTS).open("wb") as out:
        for init in proto.graph.initializer:
            raw = b"" if _is_inline(init) else init.raw_data  # one tensor's bytes at a time
            if not raw:  # small, external, or stored in typed fields: stays in the graph
                model.graph.initializer.append(init)
                continue
            out.write(b"\0" * (-offset % _PAGE))
            offset += -offset % _PAGE
            out.write(raw)
            _stub(model.graph, init, _WEIGHTS, offset, len(raw))
            offset += len(raw)
            del raw


def _in_memory(proto: onnx.ModelProto, model: onnx.ModelProto, opts: Any) -> list[bytes]:
    """Hand the large initializers to ORT as in-memory external files; the caller keeps the returned
    buffers alive until the session is built (ORT copies them then)."""
    files: list[str] = []
    buffers: list[bytes] = []
    for i, init in enumerate(proto.graph.initializer):
        raw = b"" if _is_inline(init) else init.raw_data
        if not raw:
            model.graph.initializer.append(init)
            continue
        files.append(f"dsqc-weight-{i}.bin")
        buffers.append(raw)
        _stub(model.graph, init, files[-1], 0, len(buffers[-1]))
    if files:
        opts.add_external_initializers_from_files_in_memory(files, buffers, [len(b) for b in buffers])
    return buffers


def output_session(proto: onnx.ModelProto, outputs: Sequence[str], types: dict[str, int]) -> Any:
    """A CPU session of ``proto`` whose graph outputs are exactly ``outputs``."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if not SPIN:  # idle ORT workers sleep instead of spinning: the observer thread gets the core
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    model = _skeleton(proto, outputs, types)
    folder: Path | None = None
    try:
        if SPILL_WEIGHTS:
            try:
                folder = Path(tempfile.mkdtemp(prefix="dsqc-calib-"))
                _spill(proto, model, folder)
            except OSError:  # no writable temp folder: fall back to handing ORT the bytes
                if folder is not None:
                    shutil.rmtree(folder, ignore_errors=True)
                folder = None
                del model.graph.initializer[:]
        if folder is None:
            buffers = _in_memory(proto, model, opts)  # noqa: F841  (alive until the session is built)
            source: Any = model.SerializeToString()
        else:
            source = str(folder / "model.onnx")
            onnx.save(model, source)
        session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)
        raise ModelError(f"ONNX Runtime cannot load the model for calibration: {first_line(exc)}") from None
    if folder is not None:
        weakref.finalize(session, shutil.rmtree, folder, True)
    return session


class BatchRunner:
    """``session.run`` over batches; a model that runs only at batch 1 behind a symbolic batch axis (a
    Reshape pinning it) is run one sample at a time from the first batch it fails on. ``__call__``
    returns one output list per part (the batch, or its samples); a failure that splitting does not
    cure re-raises the batch's own error."""

    def __init__(self, session: Any, names: Sequence[str]) -> None:
        self.session, self.names, self.singles = session, list(names), False

    def __call__(self, feeds: dict[str, Any]) -> list[list[Any]]:
        if self.singles:
            return [self.session.run(self.names, part) for part in _samples(feeds)]
        try:
            return [self.session.run(self.names, feeds)]
        except Exception:
            if _batch_len(feeds) <= 1:
                raise
            try:
                runs = [self.session.run(self.names, part) for part in _samples(feeds)]
            except Exception:
                pass
            else:
                log.info("the model failed at batch size %d; running one sample at a time", _batch_len(feeds))
                self.singles = True
                return runs
            raise


def _batch_len(feeds: dict[str, Any]) -> int:
    return min((len(v) for v in feeds.values() if getattr(v, "ndim", 0)), default=1)


def _samples(feeds: dict[str, Any]) -> list[dict[str, Any]]:
    return [{k: v[j:j + 1] for k, v in feeds.items()} for j in range(_batch_len(feeds))]
