"""Readers for each ``--calib`` form. Each returns raw ``(feeds [N, ...], labels | None)``."""

from __future__ import annotations

import importlib
import importlib.util
import math
import os
import re
import sys
import zipfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

import numpy as np

from dsqc.calibration.images import IMAGE_SUFFIXES, ImagePreprocess, list_images, load_images
from dsqc.calibration.inputs import InputSpec
from dsqc.calibration.validate import LABELS_KEY, as_batch, as_labels, check_names
from dsqc.errors import CalibrationError

Raw = tuple[dict[str, np.ndarray], "np.ndarray | None"]
CALLABLE_RE = re.compile(r"(?:[A-Za-z_][\w.]*|.+\.py):[A-Za-z_]\w*")
ARRAY_SUFFIXES = (".npy", ".npz")
RANDOM_SAMPLES = 32  # samples ``random`` makes when no limit is given
RANDOM_SEED = 0


class _Collector:
    """Stacks items (each one sample or a batch) until ``limit`` samples are held."""

    def __init__(self, inputs: Sequence[InputSpec], limit: int | None) -> None:
        self.inputs, self.limit = inputs, limit
        self.parts: dict[str, list[np.ndarray]] = {s.name: [] for s in inputs}
        self.labels: list[np.ndarray] | None = []
        self.n = 0

    @property
    def full(self) -> bool:
        return self.limit is not None and self.n >= self.limit

    def add(self, item: Mapping[str, Any], where: str) -> None:
        check_names(item, self.inputs, where)
        arrays = {s.name: as_batch(item[s.name], s, where) for s in self.inputs}
        counts = {len(a) for a in arrays.values()}
        if len(counts) > 1:
            raise CalibrationError(f"{where}: inputs hold different numbers of samples")
        n = counts.pop()
        if self.limit is not None:  # keep only what is still needed (a memory-mapped .npy stays unread)
            n = min(n, self.limit - self.n)
        for name, arr in arrays.items():
            self.parts[name].append(arr[:n])
        if LABELS_KEY not in item or LABELS_KEY in self.parts:
            self.labels = None  # labels only when every item has them
        elif self.labels is not None:
            self.labels.append(as_labels(item[LABELS_KEY], len(arrays[self.inputs[0].name]), where)[:n])
        self.n += n

    def result(self) -> Raw:
        feeds = {}
        for name, parts in self.parts.items():
            feeds[name] = np.concatenate(parts) if parts else np.zeros((0,), np.float32)
        labels = np.concatenate(self.labels) if self.labels else None
        if self.limit is not None:
            feeds = {k: v[: self.limit] for k, v in feeds.items()}
            labels = None if labels is None else labels[: self.limit]
        return feeds, labels


def _read_array_file(path: Path, inputs: Sequence[InputSpec], where: str) -> dict[str, Any]:
    try:
        if path.suffix.lower() == ".npy":
            if len(inputs) != 1:
                raise CalibrationError(
                    f"{where}: a .npy file holds one array but the model has inputs "
                    f"{', '.join(repr(s.name) for s in inputs)}; use .npz files with one key per input")
            with path.open("rb") as f:
                _check_declared(f, path.stat().st_size, path.name, where)
            return {inputs[0].name: np.load(path, mmap_mode="r", allow_pickle=False)}
        with zipfile.ZipFile(path) as archive:
            for info in archive.infolist():
                with archive.open(info) as member:
                    _check_declared(member, info.file_size, f"{path.name}:{info.filename}", where)
        with np.load(path, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as exc:
        if "allow_pickle" in str(exc):
            raise CalibrationError(f"{where}: {path.name} holds pickled Python objects, which dsqc does not "
                                   "load; save plain numeric arrays (np.savez)") from None
        raise CalibrationError(f"{where}: cannot read {path.name}: {exc}; write the file again") from None


def _check_declared(f: IO[bytes], size: int, name: str, where: str) -> None:
    """Refuse an .npy whose header declares more data than the file holds, before any allocation."""
    try:
        version = np.lib.format.read_magic(f)
        fmt = np.lib.format
        reader = fmt.read_array_header_1_0 if version == (1, 0) else fmt.read_array_header_2_0
        shape, _, dtype = reader(f)
    except ValueError:
        return  # np.load says what is wrong with the header itself
    if dtype.hasobject:
        return  # refused by allow_pickle=False with numpy's own message
    declared = math.prod(shape) * dtype.itemsize
    held = size - f.tell()
    if declared > held:
        raise CalibrationError(
            f"{where}: {name} declares an array of shape {tuple(shape)} {dtype.name} "
            f"({declared / 2**30:.1f} GiB) but holds {held} bytes of data; the file is truncated: "
            "write it again")


def from_file(path: Path, inputs: Sequence[InputSpec], limit: int | None, where: str) -> Raw:
    if path.suffix.lower() not in ARRAY_SUFFIXES:
        raise CalibrationError(
            f"{where}: unsupported file type {path.suffix or path.name!r}; "
            "use .npz, .npy, a folder of .npy/.npz files or images, module:function, mnist or random")
    col = _Collector(inputs, limit)
    col.add(_read_array_file(path, inputs, where), where)
    return col.result()


def from_folder(
    folder: Path,
    inputs: Sequence[InputSpec],
    limit: int | None,
    preprocess: ImagePreprocess | None,
    where: str,
) -> Raw:
    files = sorted(p for p in folder.iterdir() if p.is_file())
    arrays = [p for p in files if p.suffix.lower() in ARRAY_SUFFIXES]
    if arrays and any(p.suffix.lower() in IMAGE_SUFFIXES for p in files):
        raise CalibrationError(f"{where}: the folder mixes array files and images; keep one kind")
    if arrays:
        col = _Collector(inputs, limit)
        for path in arrays:
            if col.full:
                break
            col.add(_read_array_file(path, inputs, where), f"{where}: {path.name}")
        return col.result()
    images, labels = list_images(folder)
    if not images:
        raise CalibrationError(f"{where}: no .npy, .npz or image files (.png/.jpg/.jpeg/.bmp) in the folder")
    if len(inputs) != 1 or len(inputs[0].shape) != 4:
        raise CalibrationError(
            f"{where}: image folders need a model with one 4-D image input, "
            f"this one has inputs {', '.join(repr(s.name) for s in inputs)}")
    if limit is not None:
        images, labels = images[:limit], None if labels is None else labels[:limit]
    x = load_images(images, inputs[0], preprocess, where)
    return {inputs[0].name: x}, None if labels is None else np.asarray(labels, dtype=np.int64)


def _import(module: str, where: str) -> Any:
    try:
        if module.endswith(".py"):
            spec = importlib.util.spec_from_file_location(Path(module).stem, module)
            if spec is None or spec.loader is None:
                raise ImportError(f"cannot load {module}")
            mod = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(mod)
            return mod
        if os.getcwd() not in sys.path:  # console scripts do not put the working folder on sys.path
            sys.path.append(os.getcwd())
        return importlib.import_module(module)
    except Exception as exc:
        raise CalibrationError(f"{where}: cannot import {module}: {type(exc).__name__}: {exc}") from None


def from_callable(spec: str, inputs: Sequence[InputSpec], limit: int | None, where: str) -> Raw:
    module, name = spec.rsplit(":", 1)
    fn = getattr(_import(module, where), name, None)
    if not callable(fn):
        raise CalibrationError(f"{where}: {module} has no callable {name!r}")
    col = _Collector(inputs, limit)
    try:
        result = fn()
        items: Iterable[Any] = [result] if isinstance(result, Mapping) else result
        for i, item in enumerate(items):
            if not isinstance(item, Mapping):
                raise CalibrationError(
                    f"{where}: item {i} is a {type(item).__name__}, expected a dict of input name -> array")
            col.add(item, f"{where}: item {i}")
            if col.full:
                break
    except CalibrationError:
        raise
    except Exception as exc:
        raise CalibrationError(f"{where}: {spec} raised {type(exc).__name__}: {exc}") from None
    return col.result()


def from_mnist(inputs: Sequence[InputSpec], limit: int | None, purpose: str, where: str) -> Raw:
    if len(inputs) != 1:
        raise CalibrationError(f"{where}: mnist needs a model with one input, this one has {len(inputs)}")
    try:
        from dsqc.models.mnist import load_mnist

        x, y = load_mnist("test" if purpose.startswith("eval") else "train")
    except ImportError as exc:
        raise CalibrationError(f"{where}: {exc}") from None
    if limit is not None:
        x, y = x[:limit], y[:limit]
    return {inputs[0].name: x}, y


def from_random(inputs: Sequence[InputSpec], limit: int | None) -> Raw:
    """Seeded N(0, 1) data of each input's static shape (dynamic dims 1); integer inputs 1, bool True."""
    n = RANDOM_SAMPLES if limit is None else limit
    rng = np.random.default_rng(RANDOM_SEED)
    feeds = {}
    for spec in inputs:
        shape = (n, *(d if isinstance(d, int) and d > 0 else 1 for d in spec.shape[1:]))
        dtype = np.dtype(spec.dtype)
        if dtype.kind == "f":
            feeds[spec.name] = rng.standard_normal(shape, dtype=np.float32).astype(dtype)
        else:
            feeds[spec.name] = np.ones(shape, dtype=dtype)
    return feeds, None
