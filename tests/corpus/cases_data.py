"""Corpus: calibration data (names, shapes, dtypes, NaN/Inf, counts, huge declared arrays, files)."""

from __future__ import annotations

import zipfile
from collections.abc import Callable
from pathlib import Path

import numpy as np

from . import _models as M
from ._corpus import Built, Case


def _mlp_with(write: Callable[[Path], Path], *extra: str) -> Callable[[Path], list[str]]:
    """mlp() (input x[N,8]) calibrated on what ``write`` puts in the case folder."""
    def make(tmp: Path) -> list[str]:
        model = M.save(M.mlp(), tmp / "mlp.onnx")
        return ["build", str(model), "--target", "onnx", "--no-latency", "--calib", str(write(tmp)), *extra]
    return make


def _npz(**arrays: np.ndarray) -> Callable[[Path], Path]:
    return lambda tmp: M.npz(tmp / "calib.npz", **arrays)


def _with_bad(value: float, sample: int = 7) -> Callable[[Path], Path]:
    x = M.samples((24, 8))
    x[sample, 3] = value
    return _npz(x=x)


def _npy_declaring(shape: tuple[int, ...]) -> Callable[[Path], Path]:
    """An .npy whose header declares ``shape`` (float32) but which holds one row of data."""
    def write(tmp: Path) -> Path:
        path = tmp / "huge.npy"
        with path.open("wb") as f:
            np.lib.format.write_array_header_1_0(
                f, {"descr": "<f4", "fortran_order": False, "shape": shape})
            f.write(M.samples((1, 8)).tobytes())
        return path
    return write


def _npz_declaring(shape: tuple[int, ...]) -> Callable[[Path], Path]:
    """The same lie inside an .npz member."""
    def write(tmp: Path) -> Path:
        inner = _npy_declaring(shape)(tmp)
        path = tmp / "huge.npz"
        with zipfile.ZipFile(path, "w") as archive:
            archive.write(inner, "x.npy")
        inner.unlink()
        return path
    return write


def _pickled(tmp: Path) -> Path:
    path = tmp / "calib.npz"
    np.savez(path, x=np.array([{"a": 1}] * 24, dtype=object))
    return path


def _corrupt_npz(tmp: Path) -> Path:
    good = M.npz(tmp / "good.npz", x=M.samples((24, 8))).read_bytes()
    path = tmp / "calib.npz"
    path.write_bytes(good[: len(good) // 2])
    return path


def _empty_folder(tmp: Path) -> Path:
    (tmp / "calib").mkdir()
    return tmp / "calib"


def _npy_folder(tmp: Path) -> Path:
    folder = tmp / "calib"
    folder.mkdir()
    for i in range(12):
        np.save(folder / f"{i:03d}.npy", M.samples((2, 8), seed=i))
    return folder


def _eval_file(tmp: Path) -> str:
    return str(M.npz(tmp / "eval.npz", x=M.samples((8, 8), seed=9)))


def _one_sample_with_eval(tmp: Path) -> list[str]:
    args = _mlp_with(_npz(x=M.samples((1, 8))))(tmp)
    return [*args, "--eval-data", _eval_file(tmp), "--no-repair"]  # (repaired, it builds ok in fp16)


def _gather_out_of_range(tmp: Path) -> list[str]:
    model = M.save(M.embedding_model(), tmp / "ids.onnx")
    ids = np.random.default_rng(0).integers(0, 50, (24, 6))
    ids[5, 2] = 77  # the table has 50 rows
    calib = M.npz(tmp / "ids.npz", ids=ids)
    return ["build", str(model), "--target", "onnx", "--no-latency", "--calib", str(calib)]


GB10 = (335_544_320, 8)  # 10 GiB of float32 declared

CASES = [
    Case("wrong-input-name", "calibration data", _mlp_with(_npz(input=M.samples((24, 8)))),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': unknown input 'input'; the model's inputs "
                "are 'x'"),
    Case("wrong-shape", "calibration data", _mlp_with(_npz(x=M.samples((24, 9)))),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': input 'x' expects [N,8], got [N,9]"),
    Case("wrong-rank", "calibration data", _mlp_with(_npz(x=M.samples((24, 2, 8)))),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': input 'x' expects [N,8] or one sample [8], "
                "got an array of shape [24,2,8]"),
    Case("wrong-dtype-int", "calibration data",
         _mlp_with(_npz(x=np.arange(24 * 8, dtype=np.int32).reshape(24, 8))),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': input 'x' expects float32, got int32; "
                "convert the data to float32 (with the model's preprocessing)"),
    Case("float64-is-cast", "calibration data", _mlp_with(_npz(x=M.samples((24, 8), dtype=np.float64))),
         built=Built(("mlp.int8.onnx", "report.json"), ("fc1", "fc2"))),
    Case("nan-in-sample", "calibration data", _mlp_with(_with_bad(np.nan)),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': input 'x' has NaN in sample 7; clean the "
                "data or leave the sample out"),
    Case("inf-in-sample", "calibration data", _mlp_with(_with_bad(np.inf, sample=20)),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': input 'x' has Inf in sample 20; clean the "
                "data or leave the sample out"),
    Case("zero-samples", "calibration data", _mlp_with(_npz(x=np.zeros((0, 8), np.float32))),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': no samples; provide at least one"),
    Case("empty-npz", "calibration data", _mlp_with(_npz()),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': no data for input 'x'; the model's inputs "
                "are 'x'"),
    # 5 calibration samples (1 held out) in one partial batch of 8: ranges from 5 samples, SQNR ~15 dB
    Case("fewer-samples-than-batch", "calibration data", _mlp_with(_npz(x=M.samples((6, 8)))),
         built=Built(("mlp.int8.onnx", "report.json"), ("fc1", "fc2"), min_sqnr=10)),
    Case("one-sample", "calibration data", _mlp_with(_npz(x=M.samples((1, 8)))),
         refuse="dsqc: error: {tmp}/calib.npz: 1 samples are too few to calibrate and verify; give at least "
                "5 or pass --eval-data"),
    # ranges from one sample clip the 8 held-out ones (SQNR ~7 dB): plain int8 builds, and the verdict says so
    Case("one-sample-with-eval-data", "calibration data", _one_sample_with_eval,
         built=Built(("mlp.int8.onnx", "report.json"), ("fc1", "fc2"), min_sqnr=5,
                     warnings=("dsqc: warning: verdict COLLAPSED: output 'y' cosine …",))),
    Case("npy-declares-10gb", "calibration data", _mlp_with(_npy_declaring(GB10)),
         refuse="dsqc: error: calibration data '{tmp}/huge.npy': huge.npy declares an array of shape "
                "(335544320, 8) float32 (10.0 GiB) but holds 32 bytes of data; the file is truncated: write "
                "it again"),
    Case("npz-declares-10gb", "calibration data", _mlp_with(_npz_declaring(GB10)),
         refuse="dsqc: error: calibration data '{tmp}/huge.npz': huge.npz:x.npy declares an array of shape "
                "(335544320, 8) float32 (10.0 GiB) but holds 32 bytes of data; the file is truncated: write "
                "it again"),
    Case("pickled-objects", "calibration data", _mlp_with(_pickled),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': calib.npz holds pickled Python objects, "
                "which dsqc does not load; save plain numeric arrays (np.savez)"),
    Case("corrupt-npz", "calibration data", _mlp_with(_corrupt_npz),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': cannot read calib.npz: File is not a zip "
                "file; write the file again"),
    Case("labels-count", "calibration data",
         _mlp_with(_npz(x=M.samples((24, 8)), labels=np.arange(20))),
         refuse="dsqc: error: calibration data '{tmp}/calib.npz': 20 labels for 24 samples; give one label "
                "per sample"),
    Case("empty-folder", "calibration data", _mlp_with(_empty_folder),
         refuse="dsqc: error: calibration data '{tmp}/calib': no .npy, .npz or image files "
                "(.png/.jpg/.jpeg/.bmp) in the folder"),
    Case("folder-of-npy", "calibration data", _mlp_with(_npy_folder),
         built=Built(("mlp.int8.onnx", "report.json"), ("fc1", "fc2"))),
    Case("no-such-data", "calibration data", _mlp_with(lambda tmp: tmp / "nowhere.npz"),
         refuse="dsqc: error: calibration data '{tmp}/nowhere.npz': no such file or folder, and not "
                "module:function, 'mnist' or 'random'"),
    Case("token-id-out-of-range", "calibration data", _gather_out_of_range,
         refuse="dsqc: error: ids.npz (24 samples), first 20, first 10: ONNX Runtime failed on samples 5..5: "
                "[ONNXRuntimeError] : 2 : INVALID_ARGUMENT : Non-zero status code returned while running "
                "Gather node. Name:'embed' Status Message: indices element out of data bounds, idx=77 must "
                "be within the inclusive range [-50,49]"),
]
