"""The input hash of a batch item: what a finished bundle must match to be skipped on the next run.

It covers the model file's bytes, the calibration set (a file's bytes; a folder's file names and bytes;
the name of a built-in set or a ``module:function``, whose code is not hashed), the held-out data the same
way, the recipe's bytes, the dsqc version and a digest of dsqc's own source files (so a changed compiler
between two commits of one version rebuilds; dsqc.batch itself is left out), the target and every
build option. Limits are left out: they decide whether a build finishes, not what it writes.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import json
from pathlib import Path
from typing import Any

from dsqc import __version__
from dsqc.batch.manifest import BUILTIN_DATA, Item

_CHUNK = 1 << 20


def input_hash(item: Item, cache: dict[Path, str] | None = None) -> str:
    """sha256 (hex) over the item's inputs; ``cache`` keeps file digests within one run."""
    cache = {} if cache is None else cache
    build = dict(item.build)
    if "eval_data" in build:
        build["eval_data"] = data_digest(str(build["eval_data"]), cache)
    body: dict[str, Any] = {
        "dsqc": [__version__, source_digest()],
        "model": file_digest(item.model, cache),
        "target": item.target,
        "recipe": file_digest(item.recipe, cache) if item.recipe else None,
        "calib": data_digest(item.calib.spec, cache),
        "build": build,
    }
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


@functools.cache
def source_digest() -> str:
    """sha256 over the ``.py`` files of the installed dsqc packages (core, passes, backends, models),
    found without importing them."""
    digest = hashlib.sha256()
    for name in ("dsqc", "dsqc.passes", "dsqc.backends", "dsqc.models"):
        spec = importlib.util.find_spec(name)
        for root in (spec.submodule_search_locations or []) if spec else []:
            for path in sorted(Path(root).rglob("*.py")):
                if name == "dsqc" and path.relative_to(root).parts[0] == "batch":
                    continue  # the batch runner does not change what a build writes
                digest.update(f"{name}/{path.relative_to(root)}".encode())
                digest.update(path.read_bytes())
    return digest.hexdigest()


def file_digest(path: Path, cache: dict[Path, str]) -> str:
    path = path.resolve()
    if path not in cache:
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while chunk := f.read(_CHUNK):
                digest.update(chunk)
        cache[path] = digest.hexdigest()
    return cache[path]


def data_digest(spec: str, cache: dict[Path, str]) -> str:
    """A data spec as `--calib` takes it: built-in name or module:function as text, else its contents."""
    path = Path(spec)
    if spec in BUILTIN_DATA or not path.exists():
        return f"spec:{spec}"
    if path.is_file():
        return f"file:{file_digest(path, cache)}"
    files = [p for p in sorted(path.rglob("*")) if p.is_file()]
    listing = [(str(p.relative_to(path)), file_digest(p, cache)) for p in files]
    return "folder:" + hashlib.sha256(json.dumps(listing).encode()).hexdigest()


def tree_hashes(folder: Path) -> dict[str, str]:
    """sha256 of every file under ``folder``, by relative path (sorted)."""
    return {str(p.relative_to(folder)): file_digest(p, {}) for p in sorted(folder.rglob("*")) if p.is_file()}
