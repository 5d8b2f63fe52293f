"""Corpus: the model file itself (bytes, format, external data)."""

from __future__ import annotations

import gzip
import io
import os
import zipfile
from pathlib import Path

import onnx
from onnx import TensorProto

from . import _models as M
from ._corpus import Built, Case

FP32 = ("--precision", "fp32")


def _build(model: Path, *extra: str) -> list[str]:
    return ["build", str(model), "--target", "onnx", *extra]


def _bytes(name: str, data: bytes) -> object:
    def make(tmp: Path) -> list[str]:
        path = tmp / name
        path.write_bytes(data)
        return _build(path, *FP32)
    return make


def _zip() -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as archive:
        archive.writestr("model/data.pkl", b"\x80\x02}q\x00.")
    return buf.getvalue()


_GOOD = M.mlp().SerializeToString()


def _field_boundary(tmp: Path) -> list[str]:
    """Cut before opset_import (serialized last): the protobuf parses, the model is incomplete."""
    proto = M.mlp()
    del proto.opset_import[:]
    path = tmp / "cut.onnx"
    path.write_bytes(proto.SerializeToString())
    return _build(path, *FP32)


def _external(tmp: Path, location: str, dims: tuple[int, ...] = (16, 8), length: int | None = None,
              data: bytes | None = None) -> Path:
    """mlp() with ``w1`` as external data at ``location`` (relative to models/)."""
    proto = M.mlp()
    w1 = proto.graph.initializer[0]
    raw = onnx.numpy_helper.to_array(w1).tobytes() if data is None else data
    w1.ClearField("raw_data")
    w1.ClearField("float_data")
    del w1.dims[:]
    w1.dims.extend(dims)
    w1.data_location = TensorProto.EXTERNAL
    size = len(raw) if length is None else length
    entries = [("location", location), ("offset", "0"), ("length", str(size))]
    for key, value in entries:
        w1.external_data.add(key=key, value=value)
    folder = tmp / "models"
    folder.mkdir(exist_ok=True)
    path = folder / "ext.onnx"
    path.write_bytes(proto.SerializeToString())
    return path


def _ext_outside(tmp: Path) -> list[str]:
    raw = onnx.numpy_helper.to_array(M.mlp().graph.initializer[0]).tobytes()
    (tmp / "w1.bin").write_bytes(raw)
    return _build(_external(tmp, "../w1.bin"), *FP32)


def _ext_symlink(tmp: Path) -> list[str]:
    raw = onnx.numpy_helper.to_array(M.mlp().graph.initializer[0]).tobytes()
    secret = tmp / "elsewhere"
    secret.mkdir()
    (secret / "w1.bin").write_bytes(raw)
    path = _external(tmp, "w1.bin")
    os.symlink(secret / "w1.bin", tmp / "models" / "w1.bin")
    return _build(path, *FP32)


def _ext_inside_ok(tmp: Path) -> list[str]:
    raw = onnx.numpy_helper.to_array(M.mlp().graph.initializer[0]).tobytes()
    path = _external(tmp, "weights/w1.bin")
    (tmp / "models" / "weights").mkdir()
    (tmp / "models" / "weights" / "w1.bin").write_bytes(raw)
    return _build(path, *FP32)


def _ext_truncated(tmp: Path) -> list[str]:
    raw = onnx.numpy_helper.to_array(M.mlp().graph.initializer[0]).tobytes()
    path = _external(tmp, "w1.bin")
    (tmp / "models" / "w1.bin").write_bytes(raw[:100])
    return _build(path, *FP32)


def _ext_huge(tmp: Path) -> list[str]:
    """w1 declared [16, 35_000_000] float32 = 2.24 GB in a sparse file (no disk blocks written)."""
    size = 16 * 35_000_000 * 4
    path = _external(tmp, "w1.bin", dims=(16, 35_000_000), length=size, data=b"")
    with (tmp / "models" / "w1.bin").open("wb") as f:
        f.truncate(size)
    return _build(path, *FP32)


def _ext_missing(tmp: Path) -> list[str]:
    return _build(_external(tmp, "w1.bin"), *FP32)


def _directory(tmp: Path) -> list[str]:
    (tmp / "model.onnx").mkdir()
    return _build(tmp / "model.onnx", *FP32)


E = "dsqc: error: {tmp}/"
NOT_ONNX = ("not a valid ONNX model (the protobuf does not parse: truncated, or not ONNX); export the model "
            "again")
EXT = E + "models/ext.onnx: initializer 'w1' "
NO_OPSET = ("the model imports no standard ONNX opset (opset_import has no domain ''; a truncated file or "
            "a broken export); export the model again")
TORCH_HINT = "export it with `dsqc export module:factory -o model.onnx` or torch.onnx.export"

CASES = [
    Case("empty-file", "file", _bytes("empty.onnx", b""),
         refuse=E + "empty.onnx: the file is empty (0 bytes); export the model again"),
    Case("truncated", "file", _bytes("trunc.onnx", _GOOD[: len(_GOOD) // 2]),
         refuse=E + "trunc.onnx: " + NOT_ONNX),
    Case("truncated-at-field", "file", _field_boundary, refuse=E + "cut.onnx: " + NO_OPSET),
    Case("text-not-onnx", "file", _bytes("notes.onnx", b"this is a text file, not a model\n" * 20),
         refuse=E + "notes.onnx: this is a text file, not an ONNX model; give dsqc the binary .onnx file "
                    "(a .onnx saved as text is not read)"),
    Case("magic-tflite", "file", _bytes("model.onnx", b"\x1c\x00\x00\x00TFL3" + bytes(64)),
         refuse=E + "model.onnx: this is a TFLite flatbuffer, not an ONNX model; dsqc reads ONNX; convert "
                    "the original model to ONNX"),
    Case("magic-pytorch-zip", "file", _bytes("model.onnx", _zip()),
         refuse=E + "model.onnx: this is a zip archive (a PyTorch checkpoint?), not an ONNX model; "
                    + TORCH_HINT),
    Case("magic-gzip", "file", _bytes("model.onnx", gzip.compress(_GOOD)),
         refuse=E + "model.onnx: this is a gzip file, not an ONNX model; decompress it first"),
    Case("magic-hdf5", "file", _bytes("model.onnx", b"\x89HDF\r\n\x1a\n" + bytes(64)),
         refuse=E + "model.onnx: this is an HDF5 file (a Keras model?), not an ONNX model; convert it to "
                    "ONNX first (e.g. tf2onnx)"),
    Case("no-such-file", "file", lambda tmp: _build(tmp / "missing.onnx", *FP32),
         refuse=E + "missing.onnx: no such model file"),
    Case("model-is-a-folder", "file", _directory,
         refuse=E + "model.onnx: is a folder; give the .onnx file inside it"),
    Case("external-outside-folder", "external data", _ext_outside,
         refuse=EXT + "points its external data at '../w1.bin', outside the model's folder; copy the "
                      "data file beside the model"),
    Case("external-through-symlink", "external data", _ext_symlink,
         refuse=EXT + "points its external data at 'w1.bin', a symlink to '{tmp}/elsewhere/w1.bin', "
                      "outside the model's folder; copy the data file beside the model"),
    Case("external-missing-file", "external data", _ext_missing,
         refuse=EXT + "needs external data file 'w1.bin', which is missing"),
    Case("external-truncated-file", "external data", _ext_truncated,
         refuse=EXT + "needs bytes 0..512 of 'w1.bin', which holds 100; the data file is truncated or "
                      "not this model's: copy it again"),
    Case("external-over-2gb-sparse", "external data", _ext_huge,
         refuse=E + "models/ext.onnx: the weights come to over 2 GB (at initializer 'w1'); dsqc holds a "
                    "model in one protobuf, which cannot exceed 2 GB: quantize a smaller model or split it"),
    Case("external-in-subfolder", "external data", _ext_inside_ok,
         built=Built(("ext.fp32.onnx", "report.json"))),
]
