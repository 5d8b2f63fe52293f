"""Writes ``<name>.int8.onnx`` (the canonical QDQ model) or ``<name>.fp32.onnx``."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsqc.model_io import save_model
from dsqc.quant.profile import TargetProfile

from ..options import check_options
from ..registry import Backend, BackendOutput, Feeds, LoweringJob, WrittenBuild, ort_outputs, register
from .isa import ISAS, WEIGHT_LIMIT, resolve_isa
from .profile import ONNX_PROFILE, onnx_profile


@dataclass(frozen=True)
class OnnxOptions:
    """``-B`` options of this target: ``isa``, the CPU that will run the model (default: this one)."""

    isa: str | None = field(default=None, metadata={"choices": ISAS})


@register
class OnnxBackend(Backend):
    name = "onnx"
    description = "QDQ ONNX for ONNX Runtime (uint8 activations, int8 per-channel weights)"
    profile = ONNX_PROFILE
    options = OnnxOptions
    runtime_name = "ONNX Runtime"

    def profile_for(self, options: dict[str, Any]) -> TargetProfile:
        """Weight bits follow ``-B isa=avx2|vnni|arm64`` (default: the build machine's CPU)."""
        _check_keys(options)
        return onnx_profile(resolve_isa(options.get("isa"))[0])

    def emit(self, job: LoweringJob, out: Path) -> BackendOutput:
        _check_keys(job.options)
        model = job.qdq if job.qdq is not None else job.fp32
        suffix = "int8" if job.qdq is not None else "fp32"
        path = Path(f"{job.name}.{suffix}.onnx")
        save_model(model, out / path)
        isa, how = resolve_isa(job.options.get("isa"))
        bits = 8 if WEIGHT_LIMIT[isa] == 127 else 7
        return BackendOutput(artifacts=[path], metrics={"onnx": {"isa": isa, "isa_source": how,
                                                                 "weight_bits": bits}})

    def run_artifact(self, build: WrittenBuild, feeds: list[Feeds]) -> dict[str, np.ndarray]:
        """ONNX Runtime on the written model, fused kernels as deployed."""
        return ort_outputs(build, ".onnx", feeds)


def _check_keys(options: dict[str, Any]) -> None:
    check_options("onnx", OnnxOptions, options)
