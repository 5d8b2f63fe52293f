"""Writes ``<name>.int8.onnx`` (the canonical QDQ model) or ``<name>.fp32.onnx``."""

from __future__ import annotations

from pathlib import Path

from dsqc.model_io import save_model

from ..registry import Backend, BackendOutput, LoweringJob, register
from .profile import ONNX_PROFILE


@register
class OnnxBackend(Backend):
    name = "onnx"
    description = "QDQ ONNX for ONNX Runtime (uint8 activations, int8 per-channel weights)"
    profile = ONNX_PROFILE

    def emit(self, job: LoweringJob, out: Path) -> BackendOutput:
        model = job.qdq if job.qdq is not None else job.fp32
        suffix = "int8" if job.qdq is not None else "fp32"
        path = Path(f"{job.name}.{suffix}.onnx")
        save_model(model, out / path)
        return BackendOutput(artifacts=[path])
