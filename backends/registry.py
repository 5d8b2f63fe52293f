"""Backends register by target name; ``dsqc build --target`` looks them up here.

A backend holds all knowledge of its target; the core asks it, never names it:

- ``profile`` / ``profile_for(options)``: what the planner may do (flags in ``TargetProfile``, and
  ``finish_qdq``, the target's rewrite of the QDQ model).
- ``lower(job) -> Lowered``: once per build, a pure function of the job (no files): the target's
  model(s) and in-memory checks. ``verified_model(lowered)``: what ORT verifies against FP32.
  ``runtime_outputs(qdq, options, feeds)``: a plan's QDQ model run in the target's own runtime, where
  that is not ORT (a mixed-precision search meets its budget there too).
- ``write(lowered, out) -> BackendOutput``: the artifacts into the staging folder, and checks that
  need them on disk (gcc, engine build).
- report hooks: ``summary_lines``, ``float_nodes``, ``speed_warnings``, ``verdict_outputs``,
  ``requantization``; and from a finished bundle's ``report.json``, ``report_view`` (report.html's
  target rows, the fleet index's phrase) and ``howto`` ("how to run it");
  ``check_model`` for ``dsqc check``; ``replay`` for ``dsqc debug``;
- runtime hooks, which need only what a bundle folder holds (``WrittenBuild``): ``artifact_suffixes`` /
  ``runtime_artifact`` (the file the target's runtime runs), ``run_artifact`` (the bundle's check
  vectors, ``dsqc verify`` and the cross-target agreement), and for an artifact that carries its own
  check vectors ``self_checking`` + ``self_check`` (the hls testbench under ``make csim``).
"""

from __future__ import annotations

import importlib
import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

from dsqc.errors import DsqcError, RecipeError

from .options import check_options

if TYPE_CHECKING:  # kept light: ``dsqc --help`` lists the targets through this module
    import numpy as np
    import onnx

    from dsqc.driver.build_types import BuildResult
    from dsqc.quant.profile import TargetProfile
    from dsqc.quant.spec import QuantPlan

Feeds = dict[str, "np.ndarray"]


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
    mask_padding: bool = True  # recipe [verification]: [batch, seq] outputs over real tokens only


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
    """A target's finished build folder, as its runtime needs it to run the artifact again: only what a
    bundle folder holds (``dsqc verify`` rebuilds it from the manifest; no FP32 model)."""

    folder: Path
    artifacts: list[Path]  # relative to ``folder``
    options: dict[str, Any]  # the target's -B options ({} when read back from a bundle)
    metrics: dict[str, Any]
    plan: QuantPlan | None  # None when read back from a bundle
    inputs: list[str]  # the model's input names, in order
    outputs: list[str]  # the model's output names, in order
    runtime_outputs: dict[str, np.ndarray] | None = None  # BackendOutput.runtime_outputs of the build


@dataclass(frozen=True)
class SelfCheck:
    """An artifact that carries its own check vectors (the hls testbench): the bundle's manifest records
    this in place of ``check/`` vectors, and ``Backend.self_check`` re-runs it."""

    artifact: str  # relative to the bundle folder
    runtime: str
    how: str


@dataclass(frozen=True)
class ArtifactCheck:
    """The outcome of ``Backend.self_check``: passed or not, one line saying what ran and what it found."""

    ok: bool
    detail: str
    runtime: str


@dataclass
class Lowered:
    """A job lowered for one target, not yet written: backends subclass it with their own results.

    ``verified``: the quantized ONNX model the build verifies in ORT when the target rewrites the
    canonical QDQ model into what it writes (``trt``); ``None``: the canonical ``job.qdq``.
    ``metrics``/``notes``: the lowering's own checks, carried into the ``BackendOutput``.
    """

    job: LoweringJob
    verified: onnx.ModelProto | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


@dataclass(frozen=True)
class Replay:
    """What ``dsqc debug`` replays in a build folder of this target: the verified QDQ model's file
    suffix (``None``: the plan on MODEL), the FP32 model the plan refers to (``None``: MODEL), and a
    description with ``{qdq}``/``{source}`` placeholders."""

    qdq_suffix: str | None = None
    source_suffix: str | None = None
    description: str = "the plan in report.json on MODEL (ORT reference Q/DQ)"


@dataclass(frozen=True)
class Block:
    """A piece of the report's "how to run it": ``kind`` "text" (a paragraph), "note" (a muted one) or
    "code" (preformatted); in text and notes, `backquoted` words are shown as code. Plain text: the
    report escapes it."""

    kind: str
    text: str


@dataclass(frozen=True)
class CheckRow:
    """One of the target's own checks in the report: what was checked, "pass"/"warn"/"fail", the numbers."""

    check: str
    level: str
    measured: str


@dataclass
class ReportView:
    """What report.html and the fleet index show of one target, read from its ``report.json`` body alone:
    how the build's ORT verification ran (``verified_by``), the target runtime's own per-output metrics
    (``runtime_outputs``, under ``runtime``), its checks, measured rows (what, value), one phrase for
    the fleet index, and whether the parameter map shows each scale's fixed-point form;
    ``runtime_detections``: a detector's boxes in that runtime against FP32's (``detection_summary``)."""

    verified_by: str = "ONNX Runtime (reference Q/DQ)"
    runtime: str = ""
    runtime_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    runtime_detections: dict[str, Any] | None = None
    checks: list[CheckRow] = field(default_factory=list)
    measured: list[tuple[str, str]] = field(default_factory=list)
    fleet_check: str | None = None
    fixed_point: bool = False


@dataclass(frozen=True)
class CheckResult:
    """``dsqc check``: the findings as text; ``failed`` when a rule is broken (exit 1)."""

    text: str
    failed: bool


@dataclass(frozen=True)
class WiderBuild:
    """A build of the same target with more bits everywhere, for a target with no float layers
    (``Backend.wider``): ``flag`` is how a user asks for it, ``what`` says what it is."""

    flag: str
    what: str


class Backend(ABC):
    """A target: its profile constrains the plan; ``lower`` then ``write`` produce its artifacts."""

    name: ClassVar[str]
    description: ClassVar[str]
    profile: ClassVar[TargetProfile]
    options: ClassVar[type[Any] | None] = None  # a dataclass: its fields are the target's -B keys
    replay: ClassVar[Replay] = Replay()
    has_checker: ClassVar[bool] = False  # ``check_model`` checks any QDQ model (``dsqc check``)
    runtime_name: ClassVar[str] = "no runtime here"  # what runs the written artifact in ``run_artifact``
    artifact_suffixes: ClassVar[tuple[str, ...]] = ()  # the files ``run_artifact`` runs, preferred first
    self_checking: ClassVar[SelfCheck | None] = None  # the artifact checks itself (``self_check``)

    def parse_options(self, raw: dict[str, Any]) -> dict[str, Any]:
        """``-B`` options checked and typed (strings converted); unknown keys are one-line errors, and
        the options dataclass's own checks (``__post_init__``: ranges, formats) run too."""
        typed = check_options(self.name, self.options, raw)
        if self.options is not None:
            self.options(**typed)
        return typed

    def typed_options(self, raw: dict[str, Any]) -> Any:
        """``raw`` as an instance of the ``options`` dataclass (defaults for keys not given)."""
        if self.options is None:
            check_options(self.name, None, raw)
            return None
        return self.options(**check_options(self.name, self.options, raw))

    def profile_for(self, options: dict[str, Any]) -> TargetProfile:
        """The profile the planner uses for these backend options (default: ``profile``)."""
        return self.profile

    def wider(self, options: dict[str, Any]) -> WiderBuild | None:
        """For an integer-only target (no float node to fall back to): the build with more bits
        everywhere that the verdict's advice names when int8 misses the ok line; ``None`` where there
        is none or ``options`` already ask for it (default)."""
        return None

    @abstractmethod
    def lower(self, job: LoweringJob) -> Lowered:
        """``job`` lowered for this target, in memory: a pure function of the job, run once per build."""

    @abstractmethod
    def write(self, lowered: Lowered, out: Path) -> BackendOutput:
        """Write the artifacts of ``lowered`` into the staging folder ``out``."""

    def emit(self, job: LoweringJob, out: Path) -> BackendOutput:
        """Lower and write in one call."""
        return self.write(self.lower(job), out)

    def verified_model(self, lowered: Lowered) -> onnx.ModelProto:
        """The quantized ONNX model the build verifies against FP32 in ORT: the canonical QDQ model,
        unless the target rewrote it into the artifact it writes (``Lowered.verified``)."""
        if lowered.verified is not None:
            return lowered.verified
        if lowered.job.qdq is None:
            raise DsqcError("verified_model needs a quantized model")
        return lowered.job.qdq

    def summary_lines(self, result: BuildResult) -> list[str]:
        """Lines of the terminal summary from this target's own checks (``result.metrics[name]``)."""
        return []

    def float_nodes(self, result: BuildResult) -> dict[str, str]:
        """Nodes the artifact computes in float beyond the plan's, with the reason."""
        return {}

    def integer_nodes(self, result: BuildResult) -> dict[str, str]:
        """Nodes the plan leaves float in the QDQ model that the artifact computes in integers, with how
        (``hls``: LayerNorm, GELU's tables, a layer scale)."""
        return {}

    def speed_warnings(self, result: BuildResult) -> list[str]:
        """Warnings when the target's own runtime measured the int8 artifact slower than float."""
        return []

    def latency_ratio(self, lowered: Lowered) -> float | None:
        """The int8 artifact's time over its float twin's, where lowering timed both in the target's own
        runtime (``None``: not timed there; ``onnx`` is timed in ORT by verification instead)."""
        return None

    def latency_ratios_side_by_side(self, lowereds: Sequence[Lowered]) -> list[float] | None:
        """Each lowered build's int8 time over the same float twin's, all timed in one interleaved run of the
        target's own runtime, so that builds timed apart do not differ by noise (``None``: not timed)."""
        return None

    def runtime_outputs(self, qdq: onnx.ModelProto, options: dict[str, Any],
                        feeds: list[Feeds]) -> dict[str, np.ndarray] | None:
        """``qdq`` lowered as this target lowers it and run on ``feeds`` by the target's own runtime, where
        that runtime is not ORT's reference Q/DQ semantics (``tflite``: LiteRT): float outputs by name, so
        a mixed-precision search can meet its budget there too. ``None``: ORT's run is the target's (or its
        runtime is not installed here)."""
        return None

    def verdict_outputs(self, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """Output metrics (``sqnr_db``, ``cosine``…) of the target's own runtime run, labelled, that the
        verdict judges beside ORT's; ``metrics``: the build's (``Lowered.metrics`` or the result's)."""
        return {}

    def requantization(self, result: BuildResult) -> dict[str, dict[str, list[int]]]:
        """Tensor → the integer ``multiplier`` and right ``shift`` lists that requantize into it, for
        targets that requantize with integers (``params.csv`` of a multi-target build)."""
        return {}

    def report_view(self, report: dict[str, Any]) -> ReportView:
        """The target's rows of report.html and its fleet-index phrase, from a ``report.json`` body."""
        return ReportView()

    def howto(self, report: dict[str, Any]) -> list[Block]:
        """The report's "how to run it" for a ``report.json`` body, with the bundle's own file names."""
        own = [a for a in report.get("artifacts", []) if not str(a).startswith("check/")
               and str(a) not in ("report.json", "report.html", "manifest.json")]
        return [Block("text", f"{self.description}. The target's files: "
                      + (", ".join(f"`{a}`" for a in own) or "none") + ".")]

    def check_model(self, model: onnx.ModelProto) -> CheckResult:
        """``dsqc check``: this target's quantization rules on any QDQ model (``has_checker``)."""
        raise DsqcError(f"target '{self.name}' has no model checker")

    def runtime_artifact(self, artifacts: list[Path]) -> Path | None:
        """The artifact ``run_artifact`` runs: the first with the first of ``artifact_suffixes`` that
        any has (``None``: nothing this target's runtime runs)."""
        for suffix in self.artifact_suffixes:
            for path in artifacts:
                if path.name.endswith(suffix):
                    return path
        return None

    def run_artifact(self, build: WrittenBuild, feeds: list[Feeds]) -> dict[str, np.ndarray] | None:
        """The written artifact run by this target's own runtime on ``feeds``: float outputs by name,
        samples along axis 0 — possibly fewer than fed (the hls testbench runs its own vectors).
        ``None`` where that runtime is not available here."""
        return None

    def self_check(self, build: WrittenBuild) -> ArtifactCheck:
        """Run the artifact's own check (``self_checking``) again on the files in ``build.folder``."""
        raise DsqcError(f"target '{self.name}' has no self-checking artifact")


def number(value: Any, digits: int = 4) -> str:
    """A report number as text: 4 significant digits, ∞, "–" for none (report.json writes inf as "inf")."""
    if value is None:
        return "–"
    if isinstance(value, str):
        return value
    return "∞" if math.isinf(float(value)) else f"{float(value):.{digits}g}"


def io_names(model: onnx.ModelProto) -> tuple[list[str], list[str]]:
    """A model's input names (weights left out) and output names, in order: ``WrittenBuild``'s."""
    weights = {t.name for t in model.graph.initializer}
    return [i.name for i in model.graph.input if i.name not in weights], [o.name for o in model.graph.output]


def ort_run(model: onnx.ModelProto | Path, feeds: list[Feeds]) -> dict[str, np.ndarray]:
    """ONNX Runtime (CPU, one thread, default optimizations: fused int8 kernels, as deployed) on
    ``feeds``, in the model's own batch size: a model that fixes its batch gets the samples in runs of
    that size (a remainder that fills no run is dropped)."""
    import numpy as np
    import onnx

    from dsqc.verify import run_batches, session

    proto = model if isinstance(model, onnx.ModelProto) else onnx.load(str(model))
    sess = session(proto, threads=1)
    fixed = sess.get_inputs()[0].shape[0]
    if isinstance(fixed, int) and fixed > 0 and any(len(next(iter(f.values()))) != fixed for f in feeds):
        whole = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}
        total = len(next(iter(whole.values())))
        starts = range(0, total - total % fixed, fixed)
        feeds = [{k: v[i:i + fixed] for k, v in whole.items()} for i in starts]
    return run_batches(sess, feeds)


def ort_outputs(backend: Backend, build: WrittenBuild, feeds: list[Feeds]) -> dict[str, np.ndarray]:
    """ONNX Runtime outputs of the build's ``backend.runtime_artifact``."""
    path = backend.runtime_artifact(build.artifacts)
    if path is None:
        raise DsqcError(f"{build.folder}: no {' or '.join(backend.artifact_suffixes)} file to run")
    return ort_run(build.folder / path, feeds)


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
    """Every registered target, the built-in ones imported."""
    _load_builtins()
    return sorted(_REGISTRY)


def names() -> list[str]:
    """Every target name, without importing the built-in backends (for ``--help``)."""
    return sorted(set(_BUILTIN) | set(_REGISTRY))


def get_backend(name: str) -> Backend:
    if name in _BUILTIN:
        _load_builtins(only=name)
    if name not in _REGISTRY:
        raise RecipeError(f"unknown target '{name}'; registered targets: {', '.join(names())}")
    return _REGISTRY[name]()


def checkers() -> list[str]:
    """Targets whose backend checks any QDQ model (``dsqc check --target``)."""
    return [name for name in available() if _REGISTRY[name].has_checker]


