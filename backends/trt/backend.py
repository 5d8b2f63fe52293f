"""The ``trt`` target: strongly typed QDQ ONNX, a TensorRT ≤ 10 calibration cache, build scripts, engine.

Bundle: ``<name>.trt.onnx`` (the Q/DQ model TensorRT parses: int32 bias DQs folded, optionally FP16
float islands), ``<name>.fp32.onnx`` (the normalized FP32 model the cache belongs to),
``calibration.cache``, ``build_engine.sh``, ``build_engine.py`` and, where TensorRT and a GPU are
present, ``<name>.engine``.
"""

from __future__ import annotations

import logging
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from dsqc.errors import GateError, UnsupportedError
from dsqc.model_io import save_model
from dsqc.quant.spec import Precision
from dsqc.verify import run_batches, session

from ..registry import (
    Backend,
    BackendOutput,
    Block,
    CheckResult,
    CheckRow,
    Feeds,
    Lowered,
    LoweringJob,
    Replay,
    ReportView,
    WrittenBuild,
    ort_outputs,
    register,
)
from . import engine
from .calib_cache import DEFAULT_TRT_VERSION, activation_scales, cache_header, format_cache, version_digits
from .checker import Finding, check_trt, format_findings
from .fp16 import Fp16Report, to_fp16
from .lower import float_readers_read_float, fold_int32_dequantize
from .profile import TRT_PROFILE
from .scripts import BundleFiles, render_build_py, render_build_sh

if TYPE_CHECKING:
    from dsqc.driver.build_types import BuildResult

log = logging.getLogger(__name__)
CACHE_NAME = "calibration.cache"


@dataclass(frozen=True)
class TrtOptions:
    """``job.options`` for this target."""

    require_engine: bool = False
    fp16: bool = False
    trt_version: str = DEFAULT_TRT_VERSION
    workspace_mib: int | None = None

    def __post_init__(self) -> None:
        version_digits(self.trt_version)


@dataclass
class TrtLowered(Lowered):
    """The bundle in memory: the model ``*.trt.onnx`` holds and the calibration cache's text."""

    opts: TrtOptions = field(default_factory=TrtOptions)
    model: onnx.ModelProto | None = None
    cache: str | None = None


@register
class TrtBackend(Backend):
    name = "trt"
    description = "TensorRT: strongly typed QDQ ONNX, calibration cache (TensorRT <= 10), engine build script"
    profile = TRT_PROFILE
    options = TrtOptions
    replay = Replay(qdq_suffix=".trt.onnx", source_suffix=".fp32.onnx",
                    description="the lowered QDQ model {qdq} in ORT's reference Q/DQ semantics (not a "
                                "TensorRT engine); FP32 tensors from {source}")
    has_checker = True
    runtime_name = "ONNX Runtime on *.trt.onnx (TensorRT not installed here)"
    artifact_suffixes = (".trt.onnx",)

    def lower(self, job: LoweringJob) -> TrtLowered:
        """The QDQ model as TensorRT parses it, its cache, the rules check and the ORT comparison."""
        opts: TrtOptions = self.typed_options(job.options)
        metrics: dict[str, Any] = {"trt_version_header": cache_header(opts.trt_version), "fp16": opts.fp16}
        lowering = _lowered(job, opts)
        lowered = TrtLowered(job, metrics={"trt": metrics}, opts=opts, model=lowering.model)
        if job.qdq is not None:
            lowered.verified = lowering.model
            metrics["folded_bias_dequantize"] = len(lowering.folded)
            metrics["float_readers_rewired"] = lowering.rewired
            lowered.cache = _cache(job, lowering.model_before_fp16, opts, lowered.notes, metrics)
        if lowering.fp16 is not None:
            metrics["fp16_conversion"] = lowering.fp16.to_dict()
            if lowering.fp16.overflowed:
                lowered.notes.append(f"fp16: {len(lowering.fp16.overflowed)} tensor(s) exceed the FP16 range "
                                     f"and became ±inf: {', '.join(lowering.fp16.overflowed[:5])}")
        if job.qdq is not None:
            _gate_findings(check_trt(lowering.model), lowered.notes, metrics)
        if job.eval_feeds:
            metrics["ort"] = _verify(job, lowering.model)
        return lowered

    def write(self, lowered: Lowered, out: Path) -> BackendOutput:
        assert isinstance(lowered, TrtLowered) and lowered.model is not None
        job, opts = lowered.job, lowered.opts
        available, why = engine.tensorrt_status()
        if opts.require_engine and not available:
            raise GateError(f"--require-engine: {why}; build on a machine with TensorRT and a GPU, or drop "
                            "--require-engine and run build_engine.sh there")
        files = BundleFiles(name=job.name, qdq=f"{job.name}.trt.onnx", fp32=f"{job.name}.fp32.onnx",
                            cache=CACHE_NAME if job.qdq is not None else None, engine=f"{job.name}.engine",
                            shapes=_input_shapes(job), fp16=opts.fp16)
        metrics = dict(lowered.metrics["trt"])
        result = BackendOutput(notes=list(lowered.notes), metrics={"trt": metrics})
        if lowered.cache is not None:
            (out / CACHE_NAME).write_text(lowered.cache, encoding="utf-8", newline="\n")
            result.artifacts.append(Path(CACHE_NAME))
        save_model(job.fp32, out / files.fp32)
        save_model(lowered.model, out / files.qdq)
        result.artifacts += [Path(files.qdq), Path(files.fp32)]
        scripts = {"build_engine.sh": render_build_sh(files), "build_engine.py": render_build_py(files)}
        for script, text in scripts.items():
            (out / script).write_text(text, encoding="utf-8", newline="\n")
            (out / script).chmod(0o755)
            result.artifacts.append(Path(script))
        self._engine(available, why, opts, files, out, result, metrics)
        return result

    def summary_lines(self, result: BuildResult) -> list[str]:
        m = result.metrics.get(self.name) or {}
        if not m:
            return []
        built = m.get("engine", {}).get("built")
        return [f"trt: calibration cache {m.get('cache_tensors', 0)} tensors "
                f"({m.get('trt_version_header')}); rules check {len(m.get('check', []))} finding(s)",
                "  engine: built" if built else f"  engine: not built — {m.get('engine', {}).get('reason')}"]

    def run_artifact(self, build: WrittenBuild, feeds: list[Feeds]) -> dict[str, np.ndarray]:
        """``*.trt.onnx`` in ONNX Runtime: the Q/DQ model TensorRT would parse (no TensorRT here)."""
        return ort_outputs(self, build, feeds)

    def report_view(self, report: dict[str, Any]) -> ReportView:
        """The TensorRT rules check and whether an engine was built here."""
        m = (report.get("metrics") or {}).get(self.name) or {}
        view = ReportView(fleet_check=f"rules check {len(m.get('check', []))} finding(s)" if m else None)
        if "check" in m:
            errors = [f for f in m["check"] if f.get("severity") == "error"]
            engine = m.get("engine") or {}
            view.checks = [CheckRow("TensorRT Q/DQ rules", "fail" if errors else "pass",
                                    f"{len(m['check'])} finding(s), {len(errors)} error(s)"),
                           CheckRow("engine built here", "pass" if engine.get("built") else "warn",
                                    str(engine.get("reason") or ""))]
        return view

    def howto(self, report: dict[str, Any]) -> list[Block]:
        found = self.runtime_artifact([Path(str(a)) for a in report.get("artifacts", [])])
        qdq = found.as_posix() if found else "model.trt.onnx"
        engine = qdq.removesuffix(".trt.onnx") + ".engine"
        shell = (f"trtexec --onnx={shlex.quote(qdq)} --stronglyTyped --saveEngine={shlex.quote(engine)}\n"
                 "# or, with this bundle's script (explicit INT8, TensorRT 10.x/11.x):\n./build_engine.sh\n"
                 f"trtexec --loadEngine={shlex.quote(engine)}          # time it")
        return [Block("text", "On a machine with TensorRT (the Q/DQ model is the INT8 path; no calibrator "
                      "needed):"), Block("code", shell),
                Block("note", "`build_engine.sh calib` builds implicit INT8 from the FP32 model and "
                      "`calibration.cache` (TensorRT ≤ 10 only).")]

    def check_model(self, model: onnx.ModelProto) -> CheckResult:
        """TensorRT's Q/DQ rules; a broken rule fails (warnings do not)."""
        findings = check_trt(model)
        return CheckResult(format_findings(findings), any(f.severity == "error" for f in findings))

    @staticmethod
    def _engine(available: bool, why: str, opts: TrtOptions, files: BundleFiles, out: Path,
                result: BackendOutput, metrics: dict[str, Any]) -> None:
        if not available:
            result.notes.append(f"TensorRT engine not built: {why}. On the target machine run "
                                "./build_engine.sh (trtexec) or python build_engine.py in the output folder")
            metrics["engine"] = {"built": False, "reason": why}
            return
        built = engine.build_engine(out / files.qdq, out / files.engine, files.shapes, opts.workspace_mib)
        metrics["engine"] = {"built": built.built, "reason": built.message,
                             "seconds": round(built.seconds, 2)}
        if built.built:
            result.artifacts.append(Path(files.engine))
        elif opts.require_engine:
            raise GateError(f"--require-engine: {built.message}")
        else:
            result.notes.append(f"TensorRT engine not built: {built.message}")


def _cache(job: LoweringJob, model: onnx.ModelProto, opts: TrtOptions, notes: list[str],
           metrics: dict[str, Any]) -> str:
    """The calibration cache's text: activation scales under the FP32 model's tensor names."""
    graph = job.fp32.graph
    fp32_names = {v.name for v in graph.input} | {o for n in graph.node for o in n.output}
    scales, cache_notes = activation_scales(model, fp32_names)
    missing = sorted(set(scales) - fp32_names)
    if missing:
        raise UnsupportedError(f"calibration cache: tensor '{missing[0]}' is not in the FP32 model")
    notes.extend(f"calibration cache: {note}" for note in cache_notes)
    metrics["cache_tensors"] = len(scales)
    return format_cache(scales, cache_header(opts.trt_version))


def _gate_findings(findings: list[Finding], notes: list[str], metrics: dict[str, Any]) -> None:
    """TensorRT would reject a model with rule errors: stop. Warnings go to the report."""
    metrics["check"] = [{"node": f.node, "rule": f.rule, "severity": f.severity, "message": f.message}
                        for f in findings]
    errors = [f for f in findings if f.severity == "error"]
    if errors:
        first = errors[0]
        raise UnsupportedError(f"trt: {len(errors)} TensorRT Q/DQ rule error(s) in the lowered model; first: "
                               f"node '{first.node}' [{first.rule}] {first.message}")
    warnings = [f for f in findings if f.severity == "warning"]
    if warnings:
        notes.append(f"trt check: {len(warnings)} warning(s), first: node "
                            f"'{warnings[0].node}' [{warnings[0].rule}] {warnings[0].message}")


@dataclass(frozen=True)
class _Lowering:
    model: onnx.ModelProto  # what *.trt.onnx holds
    model_before_fp16: onnx.ModelProto
    folded: list[str]
    rewired: list[str]
    fp16: Fp16Report | None


def _lowered(job: LoweringJob, opts: TrtOptions) -> _Lowering:
    """The canonical QDQ model (or FP32 when there is none) lowered to what TensorRT parses and fuses:
    int32 bias DQs folded, float readers reading float, optionally FP16 float islands."""
    folded: list[str] = []
    rewired: list[str] = []
    model = job.fp32
    if job.qdq is not None:
        model, folded = fold_int32_dequantize(job.qdq)
        int8_nodes = {name for name, d in job.plan.nodes.items()
                      if d.precision in (Precision.INT8, Precision.INT4)} if job.plan else set()
        model, rewired = float_readers_read_float(model, int8_nodes)
    before, report = model, None
    if opts.fp16:
        model, report = to_fp16(model)
    return _Lowering(model, before, folded, rewired, report)


def _verify(job: LoweringJob, model: onnx.ModelProto) -> dict[str, Any]:
    """How far the lowered model's outputs moved from the canonical QDQ model's in ONNX Runtime (0 for
    CNNs: the lowering is exact there). Its SQNR vs FP32 is the build's verification.

    Graph optimizations are off: ORT then computes the Q/DQ definition in float (int8 values times
    scales, float accumulation), which is what TensorRT's int8 kernels compute up to float rounding;
    ORT's own fused x86 int8 kernels are a different runtime with its own error.
    """
    if job.qdq is None:
        return {}
    got = run_batches(session(model, optimize=False), job.eval_feeds)
    canon = run_batches(session(job.qdq, optimize=False), job.eval_feeds)
    return {"max_abs_diff_vs_qdq": max(float(np.max(np.abs(canon[n].astype(np.float64) - got[n])))
                                       for n in canon)}


def _input_shapes(job: LoweringJob) -> dict[str, tuple[int, ...]]:
    """Shapes for inputs with dynamic dims (trtexec/TensorRT need them): batch 1, other dims from the
    first evaluation batch."""
    shapes: dict[str, tuple[int, ...]] = {}
    feeds = job.eval_feeds[0] if job.eval_feeds else {}
    for inp in job.fp32.graph.input:
        dims = inp.type.tensor_type.shape.dim
        if all(d.HasField("dim_value") for d in dims):
            continue
        known = [int(d) for d in feeds[inp.name].shape] if inp.name in feeds else [1] * len(dims)
        shapes[inp.name] = tuple(d.dim_value if d.HasField("dim_value") else (1 if i == 0 else known[i])
                                 for i, d in enumerate(dims))
    return shapes
