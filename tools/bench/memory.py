"""Peak resident memory of the current process, resettable on Linux (``/proc/self/clear_refs``)."""

from __future__ import annotations

import resource
from pathlib import Path

_STATUS = Path("/proc/self/status")
_CLEAR = Path("/proc/self/clear_refs")


def _status_kb(field: str) -> float | None:
    try:
        for line in _STATUS.read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1])
    except OSError:
        return None
    return None


def current_mb() -> float:
    kb = _status_kb("VmRSS")
    return (kb or 0.0) / 1024.0


def reset_peak() -> bool:
    """Reset the peak-RSS counter to the current RSS; False if the kernel does not allow it."""
    try:
        _CLEAR.write_text("5")
    except OSError:
        return False
    return True


def peak_mb() -> float:
    """Peak RSS in MB since the last :func:`reset_peak` (or process start)."""
    kb = _status_kb("VmHWM")
    if kb is None:  # not Linux: ru_maxrss is KB on Linux, bytes on macOS
        kb = float(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    return kb / 1024.0
