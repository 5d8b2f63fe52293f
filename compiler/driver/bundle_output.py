"""A build folder is replaced as a whole: the new bundle is staged beside it and swapped in at the end.

``staged_output`` (output.py) moves staged files *into* a folder, which suits ``dsqc export`` writing one
file into any folder; a bundle must never mix old and new artifacts, so ``staged_bundle`` renames the old
bundle away, renames the staging folder into its place, then deletes the old one. A non-empty folder that
is not a dsqc bundle is refused before any work (``check_bundle_target``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

from dsqc.driver.manifest import is_bundle
from dsqc.driver.output import _HELD, _why, check_output_path, staging_folder
from dsqc.errors import OutputError


def check_bundle_target(out_dir: Path) -> None:
    """Refuse (one line) an ``-o`` that is a file, or a non-empty folder that no dsqc build made."""
    out_dir = Path(out_dir)
    check_output_path(out_dir)
    if out_dir.is_dir() and any(out_dir.iterdir()) and not is_bundle(out_dir):
        raise OutputError(f"output folder '{out_dir}' is not empty and is not a dsqc bundle (no "
                          "manifest.json or report.json of a build); choose an empty or new -o (a build "
                          "replaces its folder whole)")


@contextlib.contextmanager
def staged_bundle(out_dir: Path) -> Iterator[Path]:
    """Yield a fresh staging folder; on success it replaces ``out_dir`` whole, on failure it is deleted."""
    out_dir = Path(out_dir)
    check_bundle_target(out_dir)
    with staging_folder(out_dir) as staging:
        yield staging
        check_bundle_target(out_dir)  # someone may have filled the folder while the build ran
        _swap(staging, out_dir.resolve())

def _swap(staging: Path, out_dir: Path) -> None:
    """Old bundle away, new one in, old one deleted; SIGINT/SIGTERM held until the new one is in place."""
    held = threading.current_thread() is threading.main_thread()
    if held:
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    old: Path | None = None
    try:
        if out_dir.exists():
            old = Path(tempfile.mkdtemp(prefix=f".{out_dir.name}.old-", dir=out_dir.parent))
            os.replace(out_dir, old / "bundle")
        try:
            os.replace(staging, out_dir)
        except OSError:
            if old is not None:
                os.replace(old / "bundle", out_dir)  # put the previous bundle back
            raise
    except OSError as exc:
        raise OutputError(f"cannot move results into '{out_dir}': {_why(exc)}; choose another -o") from exc
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
