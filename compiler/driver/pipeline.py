"""The one place that states the compiler's order:

load ─► normalize ─► calibrate ─► plan ─► insert Q/DQ ─► verify ─► lower(target) ─► [repair] ─► write

[repair]: a static int8 build its own verdict finds degraded or collapsed is rebuilt with activations
quantized at run time (transformers, MLPs) and/or under the mixed-precision budget it missed, and the
best build is written (``repair.py``).
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

import onnx

from dsqc.autoprec.mixed_precision import check_request, parse_accuracy_budget
from dsqc.backends.registry import LoweringJob, get_backend
from dsqc.calibration.data import model_inputs
from dsqc.driver.build_data import model_name
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.bundle_output import check_bundle_target
from dsqc.driver.dynamic_phase import resolve_mode
from dsqc.driver.repair import repaired, wants_repair
from dsqc.driver.shared_stages import SharedStages
from dsqc.driver.stages import PRECISIONS, BuildRun, Clock, pass_seconds
from dsqc.driver.verdict import Thresholds
from dsqc.errors import RecipeError
from dsqc.ir import Model
from dsqc.model_cut import cut_at
from dsqc.model_io import load_model, prepare
from dsqc.pass_infra import FixedPoint, PassContext, PassManager, Step, TimingInstrument
from dsqc.passes import (
    BatchNormToMulAdd,
    EliminateDeadCode,
    EliminateIdentity,
    FoldAddIntoBias,
    FoldConstants,
    FoldPadIntoConv,
    FuseConvBatchNorm,
    ReduceMeanToGlobalPool,
    SimplifyReshapeTranspose,
)
from dsqc.quant.from_qdq import check_trained, has_qdq, split_qdq
from dsqc.quant.recipe import load_recipe
from dsqc.quant.spec import QuantSpec
from dsqc.verify import load_task_metric

log = logging.getLogger(__name__)


def normalization_steps() -> list[Step]:
    """FP32 clean-up and fusion, exact to float rounding. Edit the order here and only here."""
    return [
        FoldConstants(),
        FixedPoint([
            EliminateIdentity(),
            EliminateDeadCode(),
            SimplifyReshapeTranspose(),
            FoldPadIntoConv(),
            FuseConvBatchNorm(),
            FoldAddIntoBias(),
            BatchNormToMulAdd(),
            ReduceMeanToGlobalPool(),
            FoldConstants(),
        ], name="cleanup"),
        EliminateDeadCode(),
    ]


@dataclass
class NormalizeResult:
    model: onnx.ModelProto
    pass_seconds: dict[str, float] = field(default_factory=dict)
    trained: dict[str, QuantSpec] = field(default_factory=dict)  # specs of an already-quantized input


def normalize(proto: onnx.ModelProto, label: str = "model") -> NormalizeResult:
    """Run the FP32 normalization pipeline (in the active pass context) and re-validate the result."""
    timing = TimingInstrument()
    model = Model.from_proto(proto)
    result = PassManager(normalization_steps(), [timing]).run(model)
    out = result.model.to_proto()
    out.ir_version = proto.ir_version
    return NormalizeResult(prepare(out, f"{label} (normalized)"), timing.seconds)


def load_for_build(path: Path, outputs: tuple[str, ...] = ()) -> NormalizeResult:
    """The normalized FP32 model (cut at ``outputs``, ``--outputs``) and, for an already-quantized QDQ
    model (a QAT export), the specs of its Q/DQ (``dsqc.quant.from_qdq``): the model under them is what
    gets normalized and re-planned."""
    proto = cut_at(load_model(path), outputs, str(path))
    if not has_qdq(proto):
        return normalize(proto, label=str(path))
    qdq = split_qdq(proto, str(path))
    normalized = normalize(qdq.fp32, label=str(path))
    normalized.trained = check_trained(normalized.model, qdq.specs, str(path))
    return normalized


def _fp32_reference(request: BuildRequest, fp32: onnx.ModelProto,
                    trained: dict[str, QuantSpec]) -> onnx.ModelProto:
    """What verification compares against: the model itself, or ``--fp32-reference`` for a QDQ input."""
    if request.fp32_reference is None:
        return fp32
    if not trained:
        raise RecipeError(f"--fp32-reference {request.fp32_reference}: only for an already-quantized "
                          f"QDQ model; {request.model} is a float model and is its own reference")
    reference = load_and_normalize(request.fp32_reference).model
    for kind, ours, theirs in (("inputs", model_inputs(fp32), model_inputs(reference)),
                               ("outputs", fp32.graph.output, reference.graph.output)):
        mine, other = [t.name for t in ours], [t.name for t in theirs]
        if mine != other:
            raise RecipeError(f"--fp32-reference {request.fp32_reference}: its {kind} {other} differ "
                              f"from {request.model}'s {mine}")
    return reference


def load_and_normalize(path: Path, outputs: tuple[str, ...] = ()) -> NormalizeResult:
    start = time.perf_counter()
    result = normalize(cut_at(load_model(path), outputs, str(path)), label=str(path))
    log.info("normalized %s in %.2f s", path, time.perf_counter() - start)
    return result


def build(request: BuildRequest, shared: SharedStages | None = None) -> BuildResult:
    """Compile ``request.model`` for ``request.target``; artifacts appear atomically in out_dir.

    ``shared``: stages already run for another target of the same model and data (multi-target build).
    Every pass the build runs (normalization, boosters, Q/DQ insertion, backend rewrites) runs in one
    pass context: ``--dump-ir``, ``--check-each-pass`` and the ``-v`` timings see them all."""
    with PassContext.for_build(request.dump_ir, request.check_each_pass).active():
        return _build(request, shared or SharedStages())


def _build(request: BuildRequest, shared: SharedStages) -> BuildResult:
    """The stages in order; each is a ``BuildRun`` method (``stages.py``)."""
    run = _start(request, shared)  # request checked, recipe read, model loaded and normalized
    if run.mode != "static":  # activations quantized at run time (all, or per node)
        lowered = run.quantize_dynamic()
    elif request.precision != "fp32":
        lowered = run.quantize_static()  # boosters, calibrate+plan, rounding, bias correction, lower, verify
        if wants_repair(run):  # int8 below the verdict's ok line: the better of it and a mixed plan
            run, lowered = repaired(run, lowered, lambda again: _start(again, shared))
    else:
        lowered = run.lower()
    run.write(lowered)  # artifacts, report, verdict, gates, manifest: replaces the output folder whole
    return run.result


def _start(request: BuildRequest, shared: SharedStages) -> BuildRun:
    """Everything a build needs before quantizing; bad requests fail here, before any work."""
    timings: dict[str, float] = {}
    clock = Clock(timings)
    backend = get_backend(request.target)
    options = backend.parse_options(request.backend_options)  # a key the target does not know: error now
    if request.precision not in PRECISIONS:
        raise RecipeError(f"--precision {request.precision!r}: choose one of {', '.join(PRECISIONS)}")
    check_request(request)
    if request.task_metric:
        load_task_metric(request.task_metric)  # an unknown built-in or a module that does not import
    check_bundle_target(request.out_dir)  # a non-empty folder no build made: refused before any work
    recipe = load_recipe(request.recipe)
    limits = Thresholds.from_table(recipe.verdict, recipe.source)
    if request.accuracy_budget:  # the user's own ok line
        budget = parse_accuracy_budget(request.accuracy_budget)
        limits = limits.with_budget(budget.kind, budget.value, recipe.verdict.keys())
    if request.method:
        recipe.method = request.method
    with clock("load+normalize"):
        normalized = shared.once("normalize", (), lambda: load_for_build(request.model, request.outputs))
    passes_before = pass_seconds()  # the normalization's, unless another target of the build ran it
    fp32, trained = normalized.model, normalized.trained
    reference = _fp32_reference(request, fp32, trained)
    if trained and request.accuracy_budget:
        raise RecipeError(f"--accuracy-budget: {request.model} is already quantized (its Q/DQ scales "
                          "are kept); build its FP32 model for a mixed-precision search")
    mode = resolve_mode(request, recipe, backend.profile_for(options))
    if trained and mode != "static":
        raise RecipeError(f"--mode {mode}: {request.model} is already quantized with static Q/DQ scales; "
                          "build its FP32 model for dynamic quantization")
    result = BuildResult(out_dir=request.out_dir, target=request.target,
                         precision=request.precision, timings=timings, options=options)
    if request.outputs:  # dsqc debug cuts MODEL the same way
        result.metrics["cut"] = {"outputs": list(request.outputs)}
    job = LoweringJob(name=model_name(request.model), fp32=fp32, qdq=None, plan=None,
                      eval_feeds=[], options=options)
    return BuildRun(request, shared, backend, recipe, limits, mode, fp32, reference, trained,
                    normalized.pass_seconds, passes_before, result, job, clock)
