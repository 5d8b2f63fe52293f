"""One batch item in its own process: ``python -m dsqc build …`` under a time and a memory limit.

The child starts a new session, so the limits apply to its whole process group (gcc and the testbench
of an ``hls`` build included). Memory is watched, not capped with ``RLIMIT_AS``: ONNX Runtime, numpy
and glibc's per-thread arenas reserve far more address space than they touch (measured here: a
MobileNetV2 build resident at 240 MB peaks at 600–720 MB of address space, and under a 500 MB
``RLIMIT_AS`` it died in numpy "Unable to allocate 6.75 MiB"; more threads reserve more), so an
address-space cap fails healthy builds at random places while a resident-set watchdog measures what
the limit means. The watchdog samples the group's RSS every ``POLL_S`` and kills the group (SIGKILL) above
the limit; a timeout sends SIGTERM (dsqc cleans its staging folder) and SIGKILL after ``GRACE_S``.

Linux only (``/proc``). The same function runs in a thread of the local executor and inside a Ray task;
the finished build folder comes back as tar bytes, so a Ray worker needs no shared output folder.
"""

from __future__ import annotations

import contextlib
import io
import math
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from dsqc.batch.manifest import Item

POLL_S = 0.05
GRACE_S = 5.0
_PAGE = os.sysconf("SC_PAGE_SIZE")
_OOM_TEXT = re.compile(r"MemoryError|Unable to allocate|bad_alloc|Failed to allocate memory|"
                       r"Cannot allocate memory|out of memory", re.IGNORECASE)
_RUNNING: set[int] = set()  # process groups of running items, for cancel_all()
_LOCK = threading.Lock()


@dataclass
class Outcome:
    """What happened to one item; ``bundle`` is the build folder as tar bytes when the build wrote one."""

    item_id: str
    status: str  # ok | failed | timeout | memory | crashed
    reason: str
    seconds: float
    peak_rss_mb: float
    exit_code: int | None
    host: str = field(default_factory=socket.gethostname)
    bundle: bytes | None = None


@dataclass(frozen=True)
class Inputs:
    """Copies of an item's input files for a worker without the manifest's file system (Ray)."""

    files: dict[str, tuple[str, bytes]]  # role (model, recipe, calib) → (file name, bytes)


def run_item(item: Item, scratch: Path | None = None, inputs: Inputs | None = None) -> Outcome:
    """Build ``item`` in a child process under its limits; never raises for a failing build."""
    work = Path(tempfile.mkdtemp(prefix="dsqc-item-", dir=scratch)).resolve()
    try:
        paths = _materialize(inputs, work / "inputs") if inputs else {}
        out = work / "bundle"
        argv = item.argv(out, model=paths.get("model"), recipe=paths.get("recipe"),
                         calib=str(paths["calib"]) if "calib" in paths else None)
        outcome = _supervise(item, [sys.executable, "-m", "dsqc", "-q", *argv], work)
        originals = {"model": str(item.model), "recipe": str(item.recipe), "calib": item.calib.spec}
        for role, copy in paths.items():  # name the user's files in messages, not the worker's copies
            outcome.reason = outcome.reason.replace(str(copy), originals[role])
        if (out / "report.json").is_file():
            outcome.bundle = _pack(out)
        elif outcome.status == "ok":
            outcome.status, outcome.reason = "crashed", "exited 0 but wrote no report.json"
        return outcome
    finally:
        shutil.rmtree(work, ignore_errors=True)


def cancel_all() -> None:
    """Kill every running item (Ctrl-C of the batch)."""
    with _LOCK:
        groups = list(_RUNNING)
    for pgid in groups:
        _kill(pgid, signal.SIGKILL)


def _materialize(inputs: Inputs, folder: Path) -> dict[str, Path]:
    paths = {}
    for role, (name, data) in inputs.files.items():
        target = folder / role / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        paths[role] = target
    return paths


def _supervise(item: Item, command: list[str], work: Path) -> Outcome:
    limit_mb, timeout = item.limits.memory_mb, item.limits.timeout_s
    threads = str(item.limits.cpus)
    env = {**os.environ, "PYTHONUNBUFFERED": "1", "OMP_NUM_THREADS": threads,
           "OPENBLAS_NUM_THREADS": threads, "MKL_NUM_THREADS": threads}
    start = time.monotonic()
    with open(work / "stdout.log", "wb") as stdout, open(work / "stderr.log", "wb") as stderr:
        proc = subprocess.Popen(command, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL, env=env,
                                cwd=work, start_new_session=True)
    with _LOCK:
        _RUNNING.add(proc.pid)
    peak, killed_for, term_at = 0, "", 0.0
    try:
        while proc.poll() is None:
            rss = _group_rss(proc.pid)
            peak = max(peak, rss)
            now = time.monotonic()
            if not killed_for and rss > limit_mb * 2**20:
                killed_for = "memory"
                _kill(proc.pid, signal.SIGKILL)
            elif not killed_for and now - start > timeout:
                killed_for, term_at = "timeout", now
                _kill(proc.pid, signal.SIGTERM)
            elif killed_for == "timeout" and now - term_at > GRACE_S:
                _kill(proc.pid, signal.SIGKILL)
            time.sleep(POLL_S)
    finally:
        _kill(proc.pid, signal.SIGKILL)  # strays of the group (a finished build leaves none)
        with _LOCK:
            _RUNNING.discard(proc.pid)
    seconds = time.monotonic() - start
    rc = proc.returncode
    status, reason = _classify(rc, killed_for, _tail(work / "stderr.log"), peak, limit_mb, timeout)
    return Outcome(item.id, status, reason, round(seconds, 3), _mb(peak), rc)


def _mb(size: int) -> float:
    """MB rounded up to 0.1, so a group killed above ``memory_mb`` never reads as equal to it."""
    return math.ceil(size / 2**20 * 10) / 10


def _classify(rc: int, killed_for: str, stderr: list[str], peak: int, limit_mb: int,
              timeout: float) -> tuple[str, str]:
    if killed_for == "memory":
        return "memory", (f"exceeded the memory limit: resident {_mb(peak):.1f} MB > {limit_mb} MB; "
                          "raise memory_mb")
    if killed_for == "timeout":
        return "timeout", f"exceeded the time limit of {timeout:g} s; raise timeout_s"
    if rc == 0:
        return "ok", ""
    error = next((line for line in reversed(stderr) if line.startswith("dsqc: error:")), None)
    last = error or (stderr[-1] if stderr else f"exit code {rc}, no message")
    if _OOM_TEXT.search("\n".join(stderr)):
        return "memory", f"ran out of memory (peak resident {peak / 2**20:.0f} MB): {last}"
    if rc < 0:
        return "crashed", f"killed by {signal.Signals(-rc).name}" + (f": {last}" if stderr else "")
    if error is None:
        return "crashed", f"exit code {rc}: {last}"
    return "failed", error.removeprefix("dsqc: error: ")


def _tail(path: Path, lines: int = 40) -> list[str]:
    text = path.read_bytes()[-16384:].decode("utf-8", errors="replace")
    return [line.strip() for line in text.splitlines() if line.strip()][-lines:]


def _group_rss(pgid: int) -> int:
    """Resident bytes of every process in group ``pgid`` (the item's session)."""
    total = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/stat", "rb") as f:
                fields = f.read().rpartition(b")")[2].split()
            if int(fields[2]) == pgid:  # state, ppid, pgrp, …, field 24 = rss in pages
                total += int(fields[21]) * _PAGE
        except (OSError, ValueError, IndexError):
            continue
    return total


def _kill(pgid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


def _pack(folder: Path) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for path in sorted(folder.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(folder)), recursive=False)
    return buffer.getvalue()


def unpack(data: bytes, folder: Path) -> None:
    """Write a packed build folder into ``folder`` (which must not exist)."""
    folder.mkdir(parents=True)
    with tarfile.open(fileobj=io.BytesIO(data), mode="r") as tar:
        tar.extractall(folder, filter="data")
