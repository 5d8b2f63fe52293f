"""Corpus: the environment (read-only or full output disk, output paths, SIGINT/SIGTERM mid-build).

The disk cases mount a small tmpfs (root only: ``mount -t tmpfs``); the file-size-limit case gives
the same write failure to any user through RLIMIT_FSIZE. The signal cases run the real CLI in a
subprocess paused at the chosen moment (``_pausing_cli``), send the signal, and then require the
one-line message, exit 130/143, the output folder as before, and no temporary files left in $TMPDIR.
"""

from __future__ import annotations

import contextlib
import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from . import _models as M
from ._corpus import Case, Outcome

ROOT = Path(__file__).resolve().parents[2]
ORT_SESSION_ID = ".ses"  # onnxruntime writes $TMPDIR/.ses when imported; it is not dsqc's


def _big_mlp(tmp: Path, *extra: str) -> list[str]:
    """An MLP with 256 KB of weights: more than the 64 KB disks below hold."""
    model = M.save(M.mlp(features=256, width=256), tmp / "big.onnx")
    return ["build", str(model), "--target", "onnx", "--precision", "fp32", *extra]


def _calibrated(tmp: Path) -> list[str]:
    model = M.save(M.conv_net(), tmp / "net.onnx")
    calib = M.npz(tmp / "calib.npz", x=M.samples((24, 3, 8, 8)))
    return ["build", str(model), "--target", "onnx", "--no-latency", "--calib", str(calib)]


@contextlib.contextmanager
def _tmpfs(tmp: Path, options: str) -> Iterator[None]:
    disk = tmp / "disk"
    disk.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(disk)], capture_output=True)
    if proc.returncode != 0:  # not root: the rlimit case below covers the same write failure
        pytest.skip(f"cannot mount a tmpfs here ({proc.stderr.decode().strip()})")
    try:
        yield
        assert not os.listdir(disk), f"left on the disk: {os.listdir(disk)}"
    finally:
        subprocess.run(["umount", str(disk)], check=True)


def _full_disk(tmp: Path) -> contextlib.AbstractContextManager[None]:
    return _tmpfs(tmp, "size=64k")


def _read_only_disk(tmp: Path) -> contextlib.AbstractContextManager[None]:
    return _tmpfs(tmp, "ro,size=64k")


def _file_size_limit(tmp: Path, args: list[str]) -> Outcome:
    """The CLI with RLIMIT_FSIZE = 64 KB: a larger write fails with EFBIG (SIGXFSZ ignored)."""
    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = subprocess.run([sys.executable, "-m", "dsqc", *args], capture_output=True, text=True,
                          timeout=120, cwd=ROOT, preexec_fn=limit)
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def _blocked_parent(tmp: Path) -> list[str]:
    (tmp / "a_file").write_text("x")
    return _big_mlp(tmp)


def _taken(tmp: Path) -> list[str]:
    (tmp / "taken.txt").write_text("keep me\n")
    return _big_mlp(tmp)


def _interrupt(phase: str, signum: int) -> Callable[[Path, list[str]], Outcome]:
    """Run the CLI paused at ``phase``, send ``signum`` once it is there, and collect the outcome."""
    def run(tmp: Path, args: list[str]) -> Outcome:
        marker, scratch = tmp / "paused", tmp / "tmpdir"
        scratch.mkdir()
        env = {**os.environ, "TMPDIR": str(scratch), "PYTHONPATH": str(ROOT)}
        command = [sys.executable, "-m", "tests.corpus._pausing_cli", phase, str(marker), *args]
        proc = subprocess.Popen(command, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                text=True)
        deadline = time.monotonic() + 90
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), f"never reached {phase}: {proc.communicate(timeout=30)}"
        proc.send_signal(signum)
        stdout, stderr = proc.communicate(timeout=60)
        left = [p.name for p in scratch.iterdir() if p.name != ORT_SESSION_ID]
        assert not left, f"temporary files left: {left}"
        return Outcome(proc.returncode, stdout, stderr)
    return run


OUT_ERR = "dsqc: error: cannot write the artifacts for '{tmp}/disk/out' "
INTERRUPTED = "dsqc: interrupted; nothing was written"
TERMINATED = "dsqc: terminated (SIGTERM); nothing was written"
KEEP = {"notes.txt": "the user's own file\n"}
PREVIOUS_BUILD = {"report.json": '{"dsqc_version": "0.1.0", "target": "onnx"}\n', "mlp.int8.onnx": "old\n"}

CASES = [
    Case("output-disk-full", "environment", _big_mlp, out="disk/out", environment=_full_disk,
         refuse=OUT_ERR + "(the disk is full); nothing was written: free space or choose another -o"),
    Case("output-disk-read-only", "environment", _big_mlp, out="disk/out", environment=_read_only_disk,
         refuse="dsqc: error: cannot write output folder '{tmp}/disk/out': the file system is read-only; "
                "choose another -o"),
    Case("output-file-size-limit", "environment", _big_mlp, run=_file_size_limit,
         refuse="dsqc: error: cannot write the artifacts for '{tmp}/out' (a file exceeds the size limit); "
                "nothing was written: free space or choose another -o"),
    Case("output-parent-is-a-file", "environment", _blocked_parent, out="a_file/out",
         refuse="dsqc: error: cannot write output folder '{tmp}/a_file/out': '{tmp}/a_file' is a file, not a "
                "folder; choose another -o"),
    Case("output-is-a-file", "environment", _taken, out="taken.txt",
         refuse="dsqc: error: output '{tmp}/taken.txt' exists and is not a folder; choose another -o"),
    Case("sigint-mid-calibration", "signals", _calibrated, run=_interrupt("calibration", signal.SIGINT),
         refuse=INTERRUPTED, exit_code=130),
    Case("sigterm-mid-calibration", "signals", _calibrated, run=_interrupt("calibration", signal.SIGTERM),
         refuse=TERMINATED, exit_code=143),
    Case("sigint-mid-write", "signals", _calibrated, run=_interrupt("write", signal.SIGINT),
         before=PREVIOUS_BUILD,
         refuse=INTERRUPTED, exit_code=130),
    Case("sigterm-mid-write", "signals", _calibrated, run=_interrupt("write", signal.SIGTERM),
         before=PREVIOUS_BUILD,
         refuse=TERMINATED, exit_code=143),
    Case("output-not-a-bundle", "environment", _big_mlp, before=KEEP,
         refuse="dsqc: error: output folder '{tmp}/out' is not empty and is not a dsqc bundle (no "
                "manifest.json or report.json of a build); choose an empty or new -o (a build replaces its "
                "folder whole)"),
    Case("failed-build-keeps-folder", "environment", lambda tmp: _big_mlp(tmp, "--target", "npu"),
         before=KEEP, refuse="dsqc: error: unknown target 'npu'; registered targets: hls, onnx, tflite, trt"),
]
