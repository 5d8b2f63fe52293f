"""Checks that sample arrays fit the model's inputs; every failure is one ``CalibrationError`` line."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from dsqc.calibration.inputs import InputSpec
from dsqc.errors import CalibrationError

LABELS_KEY = "labels"


def fmt_shape(shape: Sequence[int | str | None], batch: str | None = "N") -> str:
    """``[N,1,28,28]``: axis 0 shown as ``batch`` (unless None), dynamic dims by name or ``?``."""
    dims = [str(d) if isinstance(d, (int, np.integer)) else (d or "?") for d in shape]
    if batch is not None and dims:
        dims[0] = batch
    return "[" + ",".join(dims) + "]"


def expected_names(inputs: Sequence[InputSpec]) -> str:
    return ", ".join(repr(s.name) for s in inputs)


def check_names(item: Mapping[str, Any], inputs: Sequence[InputSpec], where: str) -> None:
    """Every key is a model input (or ``labels``) and every input is present."""
    names = {s.name for s in inputs}
    for key in item:
        if key not in names and key != LABELS_KEY:
            raise CalibrationError(
                f"{where}: unknown input {key!r}; the model's inputs are {expected_names(inputs)}")
    for spec in inputs:
        if spec.name not in item:
            raise CalibrationError(
                f"{where}: no data for input {spec.name!r}; the model's inputs are {expected_names(inputs)}")


def as_batch(value: Any, spec: InputSpec, where: str) -> np.ndarray:
    """``value`` as ``[n, ...]``: an array of the input's rank is a batch, one axis less is one sample."""
    arr = np.asarray(value)
    rank = len(spec.shape)
    if rank == 0:
        raise CalibrationError(f"{where}: input {spec.name!r} is a scalar; dsqc stacks samples on axis 0")
    if arr.ndim == rank - 1:
        arr = arr[None]
    elif arr.ndim != rank:
        raise CalibrationError(
            f"{where}: input {spec.name!r} expects {fmt_shape(spec.shape)} or one sample "
            f"{fmt_shape(spec.shape[1:], None)}, got an array of shape {fmt_shape(arr.shape, None)}")
    return arr


def as_labels(value: Any, n: int, where: str) -> np.ndarray:
    labels = np.asarray(value).reshape(-1)
    if labels.size != n:
        raise CalibrationError(f"{where}: {labels.size} labels for {n} samples; give one label per sample")
    return labels


def _check_dtype(arr: np.ndarray, spec: InputSpec, where: str) -> np.ndarray:
    want = np.dtype(spec.dtype)
    if arr.dtype == want:
        return arr
    bad = f"{where}: input {spec.name!r} expects {want.name}, got {arr.dtype.name}"
    if want.kind == "f":
        if arr.dtype.kind != "f":
            raise CalibrationError(f"{bad}; convert the data to {want.name} (with the model's preprocessing)")
        return arr.astype(want)
    if want.kind in "iu":
        if arr.dtype.kind not in "iu":
            raise CalibrationError(f"{bad}; store integer data for this input")
        info = np.iinfo(want)
        if arr.size and (arr.min() < info.min or arr.max() > info.max):
            raise CalibrationError(f"{bad} with values outside {want.name}'s range")
        return arr.astype(want)
    if want.kind == "b" and arr.dtype.kind == "b":
        return arr
    if want.kind == "O":  # ONNX string tensors: numpy str/bytes arrays, fed to ORT as objects
        if arr.dtype.kind not in "USO":
            raise CalibrationError(f"{where}: input {spec.name!r} expects strings, got {arr.dtype.name}; "
                                   "store str data for this input")
        return arr.astype(object)
    raise CalibrationError(f"{bad}; store {want.name} data for this input")


def _check_finite(arr: np.ndarray, name: str, where: str) -> None:
    """Raise naming the first sample with a NaN/Inf (checked in blocks: no full-size temporary)."""
    rows = max(1, (1 << 22) // max(1, arr[0].size))
    for start in range(0, len(arr), rows):
        block = arr[start : start + rows]
        if not np.isfinite(block.sum()):  # cheap screen; a huge finite sum can overflow, so confirm
            finite = np.isfinite(block).reshape(len(block), -1).all(axis=1)
            if not finite.all():
                first = start + int(np.argmin(finite))
                what = "NaN" if np.isnan(arr[first]).any() else "Inf"
                raise CalibrationError(
                    f"{where}: input {name!r} has {what} in sample {first}; clean the data or leave the "
                    "sample out")


def check_feeds(
    feeds: dict[str, np.ndarray], inputs: Sequence[InputSpec], where: str
) -> dict[str, np.ndarray]:
    """Dtype (float64 → float32 is cast), static dims (axis 0 free), NaN/Inf, equal and non-zero counts."""
    out: dict[str, np.ndarray] = {}
    counts = {}
    for spec in inputs:
        arr = _check_dtype(np.asarray(feeds[spec.name]), spec, where)
        got = arr.shape
        if len(got) != len(spec.shape) or any(
            isinstance(d, int) and d != g for d, g in zip(spec.shape[1:], got[1:], strict=True)
        ):
            raise CalibrationError(
                f"{where}: input {spec.name!r} expects {fmt_shape(spec.shape)}, got {fmt_shape(got)}")
        if arr.dtype.kind == "f" and arr.size:
            _check_finite(arr, spec.name, where)
        out[spec.name] = arr
        counts[spec.name] = len(arr)
    if len(set(counts.values())) > 1:
        detail = ", ".join(f"{k!r} {v}" for k, v in counts.items())
        raise CalibrationError(f"{where}: inputs have different sample counts ({detail})")
    if not counts or next(iter(counts.values())) == 0:
        raise CalibrationError(f"{where}: no samples; provide at least one")
    return out
