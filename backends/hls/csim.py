"""Honest checks without a vendor tool: ``make csim`` with gcc, ``nm -u`` and ``-fstack-usage``.

Everything runs on a copy of the project in a temporary folder, so the artifacts stay byte-identical.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dsqc.errors import DsqcError

log = logging.getLogger(__name__)

_SUMMARY = re.compile(r"dsqc csim: (\d+) vectors, (\d+) mismatching values")
FORBIDDEN = re.compile(r"^(malloc|calloc|realloc|free|alloca|.*printf|sqrt.*|exp.*|log.*|pow.*|"
                       r"floor.*|ceil.*|round.*|lround.*|fabs.*|sin.*|cos.*|tanh.*)$")


@dataclass
class CsimResult:
    passed: bool
    vectors: int
    mismatches: int
    log: str
    outputs: np.ndarray | None = None  # [vectors, Σ output sizes] as printed by the testbench
    object_check: ObjectCheck | None = None  # ``make check`` on the same build (``inspect``)


@dataclass
class ObjectCheck:
    undefined: list[str] = field(default_factory=list)
    stack: list[tuple[str, int, str]] = field(default_factory=list)  # (function, bytes, qualifier)

    @property
    def forbidden(self) -> list[str]:
        return [s for s in self.undefined if FORBIDDEN.match(s)]

    @property
    def static_only(self) -> bool:
        return all(kind == "static" for _, _, kind in self.stack)


def toolchain_available() -> bool:
    return all(shutil.which(tool) for tool in ("gcc", "make", "nm"))


def run_csim(project: Path, timeout: float = 900.0, target: str = "csim",
             inspect: bool = False) -> CsimResult:
    """Build and run the testbench (``make -j csim``) on a copy of ``project``; ``inspect``: then
    ``make check`` in the same copy (the weight objects compiled once serve both)."""
    with tempfile.TemporaryDirectory(prefix="dsqc-hls-") as tmp:
        work = Path(tmp) / "hls"
        shutil.copytree(project, work)
        dump = Path(tmp) / "outputs.txt"
        proc = subprocess.run(["make", "-s", f"-j{os.cpu_count() or 1}", target, f"CSIM_DUMP={dump}"],
                              cwd=work, capture_output=True, text=True, timeout=timeout, check=False)
        text = proc.stdout + proc.stderr
        match = _SUMMARY.search(text)
        outputs = None
        if dump.exists():
            rows = [line.split() for line in dump.read_text().splitlines() if line.strip()]
            outputs = np.array([[int(v) for v in row] for row in rows], dtype=np.int64)
        checked = _check_object(work, timeout) if inspect and match is not None else None
    if match is None:
        log.warning("hls csim did not run:\n%s", text[-4000:])
        return CsimResult(False, 0, -1, text)
    vectors, mismatches = int(match.group(1)), int(match.group(2))
    return CsimResult(proc.returncode == 0 and mismatches == 0, vectors, mismatches, text, outputs, checked)


def check_object(project: Path, timeout: float = 300.0) -> ObjectCheck:
    """``make check`` on a copy of ``project``: its -O0 object's ``nm -u`` and stack frames."""
    with tempfile.TemporaryDirectory(prefix="dsqc-hls-") as tmp:
        work = Path(tmp) / "hls"
        shutil.copytree(project, work)
        return _check_object(work, timeout)


def _check_object(work: Path, timeout: float) -> ObjectCheck:
    """``make check`` in ``work``: the firmware compiled at -O0 with -fstack-usage and linked with its
    weights into one relocatable object; its undefined symbols and the top file's frames."""
    built = subprocess.run(["make", "-s", f"-j{os.cpu_count() or 1}", "check"], cwd=work, capture_output=True,
                           text=True, timeout=timeout, check=False)
    if built.returncode:
        raise DsqcError(f"hls: `make check` failed on the generated C at -O0 (a dsqc bug: please report it "
                        f"with the model): {(built.stderr.strip().splitlines() or ['no output'])[0]}")
    obj = work / "build" / "firmware_O0.o"
    nm = subprocess.run(["nm", "-u", str(obj)], capture_output=True, text=True, check=True)
    su = (work / "build" / "top_O0.su").read_text()
    undefined = sorted(line.split()[-1] for line in nm.stdout.splitlines() if line.strip())
    stack = []
    for line in su.splitlines():
        parts = line.split("\t")
        if len(parts) == 3:
            stack.append((parts[0].rsplit(":", 1)[-1], int(parts[1]), parts[2].strip()))
    return ObjectCheck(undefined, stack)
