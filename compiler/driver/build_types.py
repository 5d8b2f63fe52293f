"""What a build takes and what it returns: a structured result that batch runs and bundles reuse."""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsqc.driver.verdict import Verdict
from dsqc.quant.spec import QuantPlan


@dataclass
class BuildRequest:
    model: Path
    target: str
    out_dir: Path
    precision: str = "int8"
    calib: str | None = None
    calib_samples: int = 256
    calib_batch: int = 8
    eval_data: str | None = None
    eval_samples: int = 64
    method: str | None = None
    recipe: Path | None = None
    min_sqnr: float | None = None
    max_drop: float | None = None
    task_metric: str | None = None
    dump_ir: Path | None = None
    check_each_pass: bool = False
    measure_latency: bool = True
    backend_options: dict[str, Any] = field(default_factory=dict)
    accuracy_budget: str | None = None  # mixed precision: "sqnr:30", "cosine:0.98" or "drop:0.005"
    size_budget: float | None = None  # mixed precision: fraction of the FP32 weight bytes
    sensitivity_samples: int = 16  # held-out samples each one-node variant runs on
    strict: bool = False  # a verdict other than "ok" fails the build (exit 2, nothing written)
    model_label: str | None = None  # the model as the user named it (path or module:factory), for hints
    command_line: list[str] | None = None  # argv as typed (the bundle's manifest records it)
    mode: str | None = None  # static | dynamic | auto (None: the recipe's quantization.mode, else static)
    fp32_reference: Path | None = None  # a QDQ input's FP32 model to verify against (default: Q/DQ stripped)
    repair: bool = True  # a degraded/collapsed int8 build searches a mixed-precision plan (driver/repair.py)
    outputs: tuple[str, ...] = ()  # --outputs: build the part of the model that computes these tensors


def rebuild_command(request: BuildRequest, recipe: Path) -> str:
    """A shell command that rebuilds ``request`` with ``recipe`` instead of ``--accuracy-budget``,
    runnable from any directory: file arguments absolute, and a ``cd`` first when a ``module:function``
    spec must import from the directory the build ran in."""
    def where(spec: str | Path) -> str:
        return os.path.abspath(spec) if Path(spec).exists() else str(spec)

    model = request.model_label or str(request.model)
    args = ["dsqc", "build", where(model), "--target", request.target, "--calib", where(request.calib or "")]
    defaults = BuildRequest(model=request.model, target=request.target, out_dir=request.out_dir)
    for flag, name in (("--calib-samples", "calib_samples"), ("--calib-batch", "calib_batch"),
                       ("--eval-samples", "eval_samples"), ("--method", "method"),
                       ("--task-metric", "task_metric"), ("--min-sqnr", "min_sqnr"),
                       ("--max-drop", "max_drop")):
        value = getattr(request, name)
        if value != getattr(defaults, name):
            args += [flag, str(value)]
    if request.eval_data:
        args += ["--eval-data", where(request.eval_data)]
    if request.outputs:
        args += ["--outputs", ",".join(request.outputs)]
    for key, value in request.backend_options.items():
        args += ["-B", f"{key}={str(value).lower() if isinstance(value, bool) else value}"]
    args += ["--recipe", os.path.abspath(recipe), "-o", os.path.abspath(request.out_dir)]
    command = shlex.join(args)
    specs = (model, request.calib, request.task_metric)
    modules = [s for s in specs if s and ":" in s and not Path(s).exists()]
    return f"cd {shlex.quote(os.getcwd())} && {command}" if modules else command


@dataclass
class BuildResult:
    """Artifacts (paths inside ``out_dir``), verification metrics, the plan, and warnings."""

    out_dir: Path
    target: str
    precision: str
    artifacts: list[Path] = field(default_factory=list)
    metrics: dict[str, Any] = field(default_factory=dict)
    plan: QuantPlan | None = None
    warnings: list[str] = field(default_factory=list)
    options: dict[str, Any] = field(default_factory=dict)  # the target's parsed -B options
    runtime_outputs: dict[str, Any] | None = None  # the target runtime's own outputs (not in to_dict)
    timings: dict[str, float] = field(default_factory=dict)
    failed: str | None = None  # what was asked and not met although the artifacts were written (exit 2)
    verdict: Verdict | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "precision": self.precision,
            "artifacts": [str(p) for p in self.artifacts],
            "metrics": self.metrics,
            "plan_summary": self.plan.histogram() if self.plan else None,
            "warnings": self.warnings,
            "failed": self.failed,
            "verdict": self.verdict.to_dict() if self.verdict else None,
        }
