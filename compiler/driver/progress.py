"""A one-line ``\\r`` progress bar on stderr for long work (calibration, sensitivity)."""

from __future__ import annotations

import logging
import sys
import time


class Progress:
    """Redrawn at most ten times a second; silent unless ``enabled`` (the callers pass "stderr is a TTY")
    and the log shows warnings (``-q`` hides the bar too)."""

    def __init__(self, label: str, total: int, enabled: bool, unit: str = "") -> None:
        enabled = enabled and logging.getLogger("dsqc").isEnabledFor(logging.WARNING)
        self.label, self.total, self.enabled, self.unit, self.last = label, total, enabled, unit, 0.0

    def update(self, done: int) -> None:
        now = time.perf_counter()
        if not self.enabled or (now - self.last < 0.1 and done < self.total):
            return
        self.last = now
        filled = 30 * done // max(self.total, 1)
        suffix = f" {self.unit}" if self.unit else ""
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (30 - filled)}] {done}/{self.total}{suffix}")
        sys.stderr.flush()

    def close(self) -> None:
        if self.enabled:
            sys.stderr.write("\n")
            sys.stderr.flush()
