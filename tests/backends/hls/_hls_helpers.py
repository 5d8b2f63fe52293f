"""Emit an HLS project for a test case into a temporary folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from _integer_models import Case

from dsqc.backends.registry import BackendOutput, LoweringJob, get_backend


def emit(c: Case, out: Path, name: str | None = None, **options: Any) -> BackendOutput:
    job = LoweringJob(name or c.name, c.fp32, c.qdq, c.plan, [c.eval_feeds], dict(options))
    out.mkdir(parents=True, exist_ok=True)
    return get_backend("hls").emit(job, out)
