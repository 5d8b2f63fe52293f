"""Atomic output: artifacts are written to a staging folder and moved into place at the end.

Interruptions: SIGTERM is turned into ``Terminated`` (a ``KeyboardInterrupt``, like Ctrl-C) by
``termination_as_interrupt``, so the same clean-up runs for both; the move into place runs with
SIGINT/SIGTERM held back, so a signal never leaves the output folder half-replaced.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path
from types import FrameType

from dsqc.errors import OutputError

_HELD = {signal.SIGINT, signal.SIGTERM}
_DISK_ERRORS = {errno.ENOSPC: "the disk is full", errno.EDQUOT: "the disk quota is exhausted",
                errno.EFBIG: "a file exceeds the size limit", errno.EROFS: "the file system is read-only",
                errno.EACCES: "permission denied", errno.EPERM: "permission denied"}


class Terminated(KeyboardInterrupt):
    """SIGTERM arrived; raised in the main thread so every ``finally`` and context manager runs."""

    exit_code = 128 + signal.SIGTERM


@contextlib.contextmanager
def termination_as_interrupt() -> Iterator[None]:
    """While active (main thread only), SIGTERM raises ``Terminated`` instead of killing the process."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def raise_terminated(signum: int, frame: FrameType | None) -> None:
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextlib.contextmanager
def staged_output(out_dir: Path) -> Iterator[Path]:
    """Yield a staging folder; on success move its files into ``out_dir``, on failure delete it.

    A failed or interrupted build leaves ``out_dir`` as it was (absent if it was absent). A write
    that fails for lack of space or permission is one ``OutputError`` line naming the folder.
    """
    out_dir = Path(out_dir)
    check_output_path(out_dir)
    with staging_folder(out_dir) as staging:
        yield staging
        _commit(staging, out_dir)


def check_output_path(out_dir: Path) -> None:
    """Refuse (one line) an ``-o`` that is a file or lies below one."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"output '{out_dir}' exists and is not a folder; choose another -o")
    blocker = next((p for p in out_dir.resolve().parents if p.exists() and not p.is_dir()), None)
    if blocker is not None:
        raise OutputError(f"cannot write output folder '{out_dir}': '{blocker}' is a file, not a folder; "
                          "choose another -o")


@contextlib.contextmanager
def staging_folder(out_dir: Path) -> Iterator[Path]:
    """A new folder beside ``out_dir`` (same file system, the mode a plain ``mkdir`` would give), deleted
    at the end; a write inside it that fails for lack of space or permission is one ``OutputError``."""
    resolved = out_dir.resolve()
    try:
        resolved.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{resolved.name}.dsqc-", dir=resolved.parent))
        umask = os.umask(0)
        os.umask(umask)
        staging.chmod(0o777 & ~umask)  # mkdtemp's 0700 would otherwise become a swapped-in bundle's mode
    except OSError as exc:
        raise OutputError(f"cannot write output folder '{out_dir}': {_why(exc)}; choose another -o") from exc
    try:
        try:
            yield staging
        except OSError as exc:
            if exc.errno not in _DISK_ERRORS:
                raise
            raise OutputError(
                f"cannot write the artifacts for '{out_dir}' ({_why(exc)}); nothing was written: "
                "free space or choose another -o") from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)

def _why(exc: OSError) -> str:
    return _DISK_ERRORS.get(exc.errno or 0) or exc.strerror or str(exc)


def _commit(staging: Path, out_dir: Path) -> None:
    """Move the staged files into ``out_dir`` with SIGINT/SIGTERM held until all are in place."""
    held = threading.current_thread() is threading.main_thread()
    if held:
        signal.pthread_sigmask(signal.SIG_BLOCK, _HELD)
    try:
        out_dir.mkdir(exist_ok=True)
        for item in sorted(staging.iterdir()):
            target = out_dir / item.name
            if target.is_dir() and not target.is_symlink():
                shutil.rmtree(target)
            os.replace(item, target)
    except OSError as exc:
        raise OutputError(f"cannot move results into '{out_dir}': {_why(exc)}; choose another -o") from exc
    finally:
        if held:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, _HELD)
