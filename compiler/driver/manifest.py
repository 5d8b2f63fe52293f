"""``manifest.json``: what a bundle is made of and where it came from, hashed so ``dsqc verify`` can check it.

The manifest is deterministic: equal inputs give a byte-identical file. Everything that changes from run to
run (the UTC time, phase timings) lives in ``build_info.json`` beside it, which no hash covers.
``manifest_sha256`` is the SHA-256 of the manifest's canonical JSON without that field.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from dsqc import __version__
from dsqc.errors import DsqcError

MANIFEST_NAME = "manifest.json"
BUILD_INFO_NAME = "build_info.json"
BUNDLE_FORMAT = "dsqc-bundle/1"
TARGETS_INDEX = "targets.json"  # a multi-target build: one bundle per target below it
TOP_MANIFEST = "top_manifest.json"  # a multi-target build: hashes of its top-level files
TOP_FORMAT = "dsqc-multi/1"
UNHASHED = (MANIFEST_NAME, BUILD_INFO_NAME)  # every other file of a bundle is listed with its hash
VOLATILE_METRICS = ("passes_ms", "lower_write_s", "seconds")  # wall times: build_info.json, not hashed
_RUNTIMES = {"onnx": "onnx", "onnxruntime": "onnxruntime", "ai-edge-litert": "ai-edge-litert",
             "numpy": "numpy", "tensorrt": "tensorrt"}


class NotABundleError(DsqcError):
    """The folder holds no readable dsqc manifest."""


@dataclass
class Provenance:
    """What the manifest says about the inputs, filled by the driver from the build request."""

    command: list[str]
    model_label: str
    model_path: Path
    recipe_path: Path | None
    calibration: dict[str, Any] = field(default_factory=dict)  # source, hashes, samples (see data_hashes)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_arrays(feeds: dict[str, np.ndarray]) -> str:
    """A hash of named arrays (name, dtype, shape and bytes, in name order): the data a build used."""
    digest = hashlib.sha256()
    for name in sorted(feeds):
        arr = np.ascontiguousarray(feeds[name])
        digest.update(f"{name}|{arr.dtype.str}|{arr.shape}|".encode())
        digest.update(arr.tobytes())
    return digest.hexdigest()


def sha256_source(spec: str | None) -> str | None:
    """The hash of a data file or folder named by ``spec`` (built-in sets and callables: None)."""
    if not spec:
        return None
    path = Path(spec)
    if path.is_file():
        return sha256_file(path)
    if path.is_dir():
        digest = hashlib.sha256()
        for item in sorted(p for p in path.rglob("*") if p.is_file()):
            digest.update(f"{item.relative_to(path).as_posix()}|{sha256_file(item)}\n".encode())
        return digest.hexdigest()
    return None


def versions() -> dict[str, str | None]:
    """dsqc and the runtimes that made or checked the artifacts (None: not installed here)."""
    found: dict[str, str | None] = {"dsqc": __version__}
    for key, dist in _RUNTIMES.items():
        try:
            found[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            found[key] = None
    return found


def stable_metrics(metrics: dict[str, Any]) -> dict[str, Any]:
    """``metrics`` without wall-clock timings, at any depth (those go to build_info.json)."""
    return {k: stable_metrics(v) if isinstance(v, dict) else v
            for k, v in metrics.items() if k not in VOLATILE_METRICS}


def volatile_metrics(metrics: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """The wall-clock timings ``stable_metrics`` leaves out, keyed by their dotted path."""
    found: dict[str, Any] = {}
    for key, value in metrics.items():
        if key in VOLATILE_METRICS:
            found[prefix + key] = value
        elif isinstance(value, dict):
            found.update(volatile_metrics(value, f"{prefix}{key}."))
    return found


def file_entry(path: Path) -> dict[str, Any]:
    return {"sha256": sha256_file(path), "bytes": path.stat().st_size}


def file_hashes(folder: Path) -> dict[str, dict[str, Any]]:
    """Every file under ``folder`` except the manifest and build_info: relative path → sha256, bytes."""
    files: dict[str, dict[str, Any]] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel not in UNHASHED:
            files[rel] = file_entry(path)
    return files


def canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, indent=2, sort_keys=True, ensure_ascii=False, allow_nan=False) + "\n"


def body_sha256(body: dict[str, Any]) -> str:
    rest = {k: v for k, v in body.items() if k != "manifest_sha256"}
    return hashlib.sha256(canonical(rest).encode()).hexdigest()


def build_manifest(folder: Path, report: dict[str, Any], source: Provenance,
                   files: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The manifest of the finished bundle in ``folder`` (call after every other file is written);
    ``files``: the hashes, when the caller already has them."""
    recipe = None
    if source.recipe_path is not None:
        recipe = {"path": str(source.recipe_path), "sha256": sha256_file(source.recipe_path),
                  "text": source.recipe_path.read_text(encoding="utf-8")}
    body: dict[str, Any] = {
        "format": BUNDLE_FORMAT,
        "target": report.get("target"),
        "targets": [report.get("target")],
        "precision": report.get("precision"),
        "command": source.command,
        "model": {"path": source.model_label, "sha256": sha256_file(source.model_path)},
        "versions": versions(),
        "recipe": recipe,
        "calibration": source.calibration,
        "plan": report.get("plan"),
        "verdict": report.get("verdict"),
        "metrics": stable_metrics(report.get("metrics") or {}),
        "files": file_hashes(folder) if files is None else files,
    }
    body["manifest_sha256"] = body_sha256(body)
    return body


def write_manifest(folder: Path, manifest: dict[str, Any], timings: dict[str, float],
                   volatile: dict[str, Any]) -> None:
    """``manifest.json`` (hashed, deterministic) and ``build_info.json`` (time and timings, unhashed)."""
    (folder / MANIFEST_NAME).write_text(canonical(manifest), encoding="utf-8")
    info = {"built_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "manifest_sha256": manifest["manifest_sha256"],
            "timings_s": {k: round(v, 4) for k, v in timings.items()}, "volatile_metrics": volatile}
    (folder / BUILD_INFO_NAME).write_text(canonical(info), encoding="utf-8")


def write_top_manifest(folder: Path, targets: list[str], names: list[str], seconds: dict[str, float]) -> None:
    """A multi-target folder's ``top_manifest.json`` (the top-level files ``names`` with their hashes;
    deterministic) and its ``build_info.json`` (the time and each target's wall seconds; no hash covers
    it). Call after every top-level file is written."""
    body: dict[str, Any] = {"format": TOP_FORMAT, "targets": targets,
                            "files": {name: file_entry(folder / name) for name in sorted(names)}}
    body["manifest_sha256"] = body_sha256(body)
    (folder / TOP_MANIFEST).write_text(canonical(body), encoding="utf-8")
    info = {"built_at": datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "manifest_sha256": body["manifest_sha256"],
            "seconds": {k: round(v, 3) for k, v in seconds.items()}}
    (folder / BUILD_INFO_NAME).write_text(canonical(info), encoding="utf-8")


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder``; anything else is one ``NotABundleError`` line."""
    path = folder / MANIFEST_NAME
    if not folder.is_dir():
        raise NotABundleError(f"{folder}: no such folder; give the -o folder of a finished 'dsqc build'")
    if not path.is_file():
        raise NotABundleError(f"{folder}: no {MANIFEST_NAME}, so not a dsqc bundle; give the -o folder of "
                              "'dsqc build'")
    try:
        body = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotABundleError(f"{path}: unreadable ({type(exc).__name__}); not a dsqc bundle") from None
    if not isinstance(body, dict) or body.get("format") != BUNDLE_FORMAT or not isinstance(body.get("files"),
                                                                                           dict):
        raise NotABundleError(f"{path}: not a {BUNDLE_FORMAT} manifest (no 'format'/'files')")
    return body


def is_bundle(folder: Path) -> bool:
    """A dsqc build folder: a bundle manifest, or a report.json of a build made before bundles."""
    try:
        read_manifest(folder)
        return True
    except NotABundleError:
        pass
    if target_folders(folder):
        return True
    try:
        report = json.loads((folder / "report.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return False
    return isinstance(report, dict) and "dsqc_version" in report and "target" in report


def target_folders(folder: Path) -> list[Path]:
    """The per-target bundles of a multi-target build folder (``targets.json``); [] for anything else."""
    try:
        index = json.loads((folder / TARGETS_INDEX).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return []
    targets = index.get("targets") if isinstance(index, dict) else None
    if not isinstance(targets, dict):
        return []
    return [folder / str(entry.get("folder", name)) for name, entry in sorted(targets.items())
            if isinstance(entry, dict)]
