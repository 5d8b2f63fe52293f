"""Backends register by target name; ``dsqc build --target`` looks them up here."""

from __future__ import annotations

import importlib
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np
import onnx

from dsqc.errors import DsqcError, RecipeError
from dsqc.quant.profile import TargetProfile
from dsqc.quant.spec import QuantPlan
from dsqc.verify import run_batches, session

from .options import check_options

Feeds = dict[str, np.ndarray]


@dataclass
class LoweringJob:
    """What a backend receives: the FP32 model, the canonical QDQ model and the plan."""

    name: str
    fp32: onnx.ModelProto
    qdq: onnx.ModelProto | None
    plan: QuantPlan | None
    eval_feeds: list[Feeds]
    options: dict[str, Any] = field(default_factory=dict)
    eval_labels: np.ndarray | None = None
    measure_latency: bool = True


@dataclass
class BackendOutput:
    """Files a backend wrote (relative to the output folder), its own checks and notes."""

    artifacts: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    # what the target's own runtime computed at build time on the held-out samples (float outputs by
    # name), kept in memory for the cross-target agreement; never written
    runtime_outputs: dict[str, np.ndarray] | None = None


@dataclass
class WrittenBuild:
    """A target's finished build folder, as its runtime needs it to run the artifact again."""

    folder: Path
    artifacts: list[Path]
    options: dict[str, Any]
    metrics: dict[str, Any]
    plan: QuantPlan | None
    fp32: onnx.ModelProto  # the normalized FP32 model: input and output names and order
    runtime_outputs: dict[str, np.ndarray] | None = None  # BackendOutput.runtime_outputs of the build


class Backend(ABC):
    """A target. ``profile`` constrains the plan; ``emit`` lowers and writes into ``out``."""

    name: ClassVar[str]
    description: ClassVar[str]
    profile: ClassVar[TargetProfile]
    options: ClassVar[type[Any] | None] = None  # a dataclass: its fields are the target's -B keys
    runtime_name: ClassVar[str] = "no runtime here"  # what runs the written artifact in ``run_artifact``

    def parse_options(self, raw: dict[str, Any]) -> dict[str, Any]:
        """``-B`` options checked and typed (strings converted); unknown keys are one-line errors."""
        return check_options(self.name, self.options, raw)

    def profile_for(self, options: dict[str, Any]) -> TargetProfile:
        """The profile the planner uses for these backend options (default: ``profile``)."""
        return self.profile

    def verified_model(self, job: LoweringJob) -> onnx.ModelProto:
        """The quantized ONNX model the build verifies against FP32 in ORT: the canonical QDQ model,
        unless the target rewrites it into the artifact it writes (``trt``)."""
        if job.qdq is None:
            raise DsqcError("verified_model needs a quantized model")
        return job.qdq

    @abstractmethod
    def emit(self, job: LoweringJob, out: Path) -> BackendOutput:
        """Write this target's artifacts for ``job`` into the staging folder ``out``."""

    def run_artifact(self, build: WrittenBuild, feeds: list[Feeds]) -> dict[str, np.ndarray] | None:
        """The written artifact run by this target's own runtime on ``feeds``: float outputs by name,
        samples along axis 0 — possibly fewer than fed (the hls testbench runs its own vectors).
        ``None`` where that runtime is not available here."""
        return None



def ort_outputs(build: WrittenBuild, suffix: str, feeds: list[Feeds]) -> dict[str, np.ndarray]:
    """ONNX Runtime outputs (fused kernels, as deployed) of the build's first artifact named ``*suffix``."""
    path = next(build.folder / a for a in build.artifacts if a.name.endswith(suffix))
    return run_batches(session(onnx.load(str(path))), feeds)

_REGISTRY: dict[str, type[Backend]] = {}
_BUILTIN = {"onnx": "dsqc.backends.onnx", "trt": "dsqc.backends.trt",
            "tflite": "dsqc.backends.tflite", "hls": "dsqc.backends.hls"}

B = TypeVar("B", bound=type[Backend])


def register(cls: B) -> B:
    """Class decorator: make a backend available under ``cls.name``. Duplicates are an error."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise DsqcError(f"backend name '{cls.name}' is registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def _load_builtins(only: str | None = None) -> None:
    for name, module in _BUILTIN.items():
        if only is None or only == name:
            importlib.import_module(module)


def available() -> list[str]:
    _load_builtins()
    return sorted(_REGISTRY)


def get_backend(name: str) -> Backend:
    if name in _BUILTIN:
        _load_builtins(only=name)
    if name not in _REGISTRY:
        known = sorted(set(_BUILTIN) | set(_REGISTRY))
        raise RecipeError(f"unknown target '{name}'; registered targets: {', '.join(known)}")
    return _REGISTRY[name]()


def registered_factories() -> dict[str, Callable[[], Backend]]:
    _load_builtins()
    return dict(_REGISTRY)
