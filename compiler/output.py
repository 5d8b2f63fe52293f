"""Atomic output: artifacts are written to a staging folder and moved into place at the end."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import OutputError


@contextlib.contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into ``out_dir``, on failure delete it.

    A failed or interrupted build leaves ``out_dir`` as it was (absent if it was absent).
    """
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output '{out_dir}' exists and is not a folder; choose another -o")
    parent = out_dir.resolve().parent
    try:
        parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.dsqc-", dir=parent))
    except OSError as exc:
        raise OutputError(
            f"cannot write output folder '{out_dir}': {exc.strerror or exc}; choose another -o"
        ) from exc
    try:
        yield staging
        _commit(staging, out_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _commit(staging: Path, out_dir: Path) -> None:
    try:
        out_dir.mkdir(exist_ok=True)
        for item in sorted(staging.iterdir()):
            target = out_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    except OSError as exc:
        raise OutputError(f"cannot move results into '{out_dir}': {exc}") from exc
