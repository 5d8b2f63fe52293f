"""``dsqc debug MODEL OUT/``: where a finished build's error enters and how it accumulates.

For every quantized tensor of the build's plan, in graph order (``build_folder`` says which model each
target's folder lets ORT run):

- **local**: the model's outputs with *only* that point quantized, everything else float (SQNR vs FP32,
  worst output), and the tensor's own SQNR then (its rounding and clipping alone);
- **accumulated**: the tensor's SQNR in the fully quantized model vs FP32 (everything upstream plus its
  own rounding; a constant has no upstream, so it equals the local one).
- **weight + bias**: a layer's weight and int32 bias quantized together (local only), ranked with the
  rest; the weight and the bias alone are kept as its parts. Bias correction fits the bias to the
  weight's rounding, so alone the weight overstates the error that enters there and the bias shows
  the opposite one; together they are what the build ships.

Outputs the build verified over real tokens only (``verification.padding_mask`` in report.json) are
measured the same way here.

Cost for N points, S held-out samples, L ≤ S of them for the local runs. Sessions: the switch model
of the sensitivity analysis (one per segment, at most 8 for any N), one exposing every quantized tensor,
one FP32, one of the build's QDQ model — at most 12 ORT sessions, however large N. Runs: the exposing
session twice over S (switches off: FP32 and each tensor's local rounding; on: accumulated), FP32 and
the QDQ model once over S, and N runs over L of only the graph after the point's segment start, fed
cached FP32 tensors at the cut. Memory: every quantized activation of one batch (``batch_size``), twice.
"""

from __future__ import annotations

import logging
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from dsqc.autoprec.switch_model import BoundSamples, SwitchModel, workers
from dsqc.backends.registry import get_backend
from dsqc.calibration.data import SampleSet, load_samples, model_inputs
from dsqc.debug.points import JOINT, QuantPoint, joint_points, points_of, replay_artifact, replay_space
from dsqc.driver.build_data import load_data
from dsqc.driver.build_folder import BuildFolder, BuildFolderError, read_build
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import load_and_normalize
from dsqc.driver.progress import Progress
from dsqc.errors import CalibrationError, DsqcError
from dsqc.metrics import Part, channel_ranges, judged_parts
from dsqc.model_io import load_model
from dsqc.op_kinds import QDQ_OPS
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import QuantPlan
from dsqc.verify import PaddingMask, padding_mask, run_batches, session

log = logging.getLogger(__name__)
Feeds = dict[str, np.ndarray]
_SAME_FUNCTION_DB = 60.0  # MODEL vs the build's own FP32 model (trt): boosters keep the function


@dataclass
class DebugRequest:
    model: Path
    build_dir: Path
    calib: str | None = None
    eval_data: str | None = None
    eval_samples: int | None = None  # default: as many as the build verified on
    local_samples: int = 32
    batch_size: int = 8
    progress: bool | None = None


@dataclass
class PointResult:
    point: QuantPoint
    local_outputs: dict[str, float]  # output → SQNR dB with only this point quantized
    local_tensor: float | None  # None for a joint point (two tensors)
    accumulated: float | None
    rank: int = 0  # a part shares its joint point's rank

    @property
    def local_worst(self) -> float:
        return min(self.local_outputs.values(), default=math.inf)

    def to_dict(self) -> dict[str, Any]:
        p = self.point
        return {"rank": self.rank, "tensor": p.tensor, "kind": p.kind, "dtype": p.spec.dtype,
                "per_channel": p.spec.axis is not None, "position": p.position,
                "producer": p.producer, "producer_op": p.producer_op, "folded": p.folded,
                "consumers": [{"node": n, "op": op} for n, op in p.consumers],
                "parts": [q.tensor for q in p.parts], "part_of": p.part_of,
                "local_output_sqnr_db": self.local_worst,
                "local_output_sqnr_db_by_output": self.local_outputs,
                "local_tensor_sqnr_db": self.local_tensor, "accumulated_tensor_sqnr_db": self.accumulated}


@dataclass
class DebugResult:
    folder: BuildFolder
    model: Path
    rows: list[PointResult]  # graph order
    outputs: dict[str, dict[str, float]]
    data: dict[str, Any]
    notes: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def tensors(self) -> int:
        """Quantized tensors (rows but the joint weight + bias ones)."""
        return sum(1 for r in self.rows if not r.point.parts)

    def ranked(self, kinds: tuple[str, ...]) -> list[PointResult]:
        return sorted((r for r in self.rows if r.point.kind in kinds), key=lambda r: r.rank)

    def to_dict(self) -> dict[str, Any]:
        return {"model": str(self.model), "build": str(self.folder.path), "target": self.folder.target,
                "debugged": self.folder.describe(), "data": self.data, "outputs": self.outputs,
                "ranking": "by local output SQNR (only that point quantized; the worst output or scale group "
                           "of an output's channels), lowest first; a layer's "
                           "weight and bias are ranked together (kind 'weight+bias', what the build ships), "
                           "each alone is listed as a part of it with its rank",
                "points": [r.to_dict() for r in self.rows], "notes": self.notes,
                "timings_s": {k: round(v, 3) for k, v in self.timings.items()}}


def debug(request: DebugRequest) -> DebugResult:
    """Replay the build in ``request.build_dir`` against ``request.model``; nothing is written here."""
    start = time.perf_counter()
    folder, normalized, source = _models(request)
    metrics = folder.report.get("metrics", {})
    mode = (metrics.get("dynamic") or {}).get("mode")
    if mode:  # its nodes quantize activations at run time: there are no calibrated Q/DQ points to replay
        how = ("its static int8 build missed the verdict's ok line and repair kept the dynamic build; "
               "rebuild with --no-repair") if (metrics.get("repair") or {}).get("kept") == "dynamic" else \
            f"it was built with --mode {mode}; rebuild with --mode static"
        raise BuildFolderError(f"{folder.path} quantizes activations at run time: dsqc debug replays the "
                               f"calibrated Q/DQ points of static builds ({how} to debug the static plan)")
    held_out = _held_out(request, folder, normalized)
    recorded_mask = (folder.verification.get("padding_mask") or {}).get("input")
    points = points_of(source, folder.plan)
    profile = get_backend(folder.target).profile
    switch = SwitchModel(replay_space(source, profile, folder.plan))
    artifact = load_model(folder.qdq_path) if folder.qdq_path else None
    notes = replay_artifact(switch, artifact, folder.plan, points) if artifact is not None else []
    points = joint_points(points)
    if artifact is None and folder.report.get("metrics", {}).get("boosters", {}).get("bias_correction"):
        notes.append(f"bias correction changed biases of the {folder.target} artifact after planning; this "
                     "folder holds no QDQ model with them, so the replay uses the planned biases "
                     "(expect small differences from the build's verification)")
    batches = list(held_out.batches(request.batch_size))
    timings = {"load": time.perf_counter() - start}
    mark = time.perf_counter()
    shown = sys.stderr.isatty() if request.progress is None else request.progress
    tensors, off, on = _accumulate(switch, points, batches, folder.plan, shown)
    reference = run_batches(session(normalized), batches)  # the FP32 side exactly as the build verified
    _check_same_function(reference, off, folder)
    # as the build verified: outputs under its attention mask over real tokens only
    mask = padding_mask(normalized, batches, reference, recorded_mask) if recorded_mask else None
    keep = _keep(mask)
    deployed = run_batches(session(artifact, optimize=profile.verify_fused), batches) if artifact else on
    parts = _parts(reference, keep)  # what the verdict judged, from the whole held-out set
    outputs = _output_table(parts, reference, deployed, off, on, folder, keep)
    if artifact is not None:  # how exactly the replay mirrors the QDQ model (both reference Q/DQ)
        plain = run_batches(session(artifact, optimize=False), batches) if profile.verify_fused else deployed
        replay = _part_sqnr(parts, plain, on, keep)
        for label, metrics in outputs.items():
            metrics["replay_vs_qdq_sqnr_db"] = replay[label]
    timings["accumulated"] = time.perf_counter() - mark
    mark = time.perf_counter()
    local_set = held_out.take(min(request.local_samples, len(held_out)))
    local_keep = {name: k[:len(local_set)] for name, k in keep.items()}  # take() keeps the first samples
    local = _local(switch, points, folder.plan, local_set, request.batch_size, parts, local_keep, shown)
    timings["local"] = time.perf_counter() - mark
    rows: list[PointResult] = []
    for p in points:
        own = _local_tensor(switch, p, folder.plan, tensors)
        rows.append(PointResult(p, local[p.tensor], own,
                                tensors[p.tensor][1] if p.kind == "activation" else own))
    _rank(rows)
    timings["total"] = time.perf_counter() - start
    data = {"held_out": held_out.source, "samples": len(held_out), "local_samples": len(local_set),
            "sessions_at_most": len(switch.starts) + 4, "local_runs": len(points),
            "padding_mask": None if mask is None else {"input": mask.input, "outputs": list(mask.outputs)}}
    return DebugResult(folder, request.model, rows, outputs, data, notes, timings)


def _models(request: DebugRequest) -> tuple[BuildFolder, onnx.ModelProto, onnx.ModelProto]:
    """The build folder, MODEL normalized as the build did, and the FP32 model its plan refers to."""
    folder = read_build(request.build_dir)
    if request.local_samples < 1 or request.batch_size < 1:
        raise DsqcError("--local-samples and the batch size must be at least 1")
    cut = tuple((folder.report.get("metrics", {}).get("cut") or {}).get("outputs") or ())
    normalized = load_and_normalize(request.model, cut).model  # as the build cut it (--outputs)
    if any(node.op_type in QDQ_OPS for node in normalized.graph.node):
        raise BuildFolderError(f"{request.model} is already quantized; give the FP32 model the build "
                               "compiled")
    source = load_model(folder.source_path) if folder.source_path else normalized
    _check_interface(normalized, source, folder)
    return folder, normalized, source


def _check_interface(normalized: onnx.ModelProto, source: onnx.ModelProto, folder: BuildFolder) -> None:
    names = [[v.name for v in g.input if v.name not in {t.name for t in g.initializer}] for g in
             (normalized.graph, source.graph)]
    outs = [[v.name for v in g.output] for g in (normalized.graph, source.graph)]
    if names[0] != names[1] or outs[0] != outs[1]:
        raise BuildFolderError(f"MODEL has inputs {names[0]} and outputs {outs[0]}, the build's FP32 model "
                               f"{names[1]} and {outs[1]}: MODEL is not the model {folder.path} was built "
                               "from")


def _held_out(request: DebugRequest, folder: BuildFolder, fp32: onnx.ModelProto) -> SampleSet:
    """The held-out samples: ``--eval-data``, else the build's split of ``--calib`` (or its recorded data)."""
    calib_default, eval_default = folder.data_defaults()
    recorded = folder.calibration
    samples = request.eval_samples or int(recorded.get("eval_samples") or 64)
    if samples < 1:
        raise DsqcError(f"--eval-samples {samples}: give at least 1")
    eval_data = request.eval_data or (None if request.calib else eval_default)
    if eval_data:
        return load_samples(eval_data, model_inputs(fp32), samples, purpose="eval")
    calib = request.calib or calib_default
    if calib is None:
        raise CalibrationError(f"{folder.path}/report.json names held-out data "
                               f"'{recorded.get('eval_source', '?')}' that cannot be re-loaded from here; "
                               "pass --calib DATA (as for the build) or --eval-data DATA")
    like = BuildRequest(model=request.model, target=folder.target, out_dir=folder.path, calib=calib,
                        eval_samples=samples)
    return load_data(like, fp32, Recipe())[1]


def _accumulate(switch: SwitchModel, points: list[QuantPoint], batches: list[Feeds], plan: QuantPlan,
                shown: bool) -> tuple[dict[str, tuple[float, float]], dict[str, np.ndarray],
                                          dict[str, np.ndarray]]:
    """One session exposing every quantized activation, run with all switches off and all on.

    Returns tensor → (local SQNR, accumulated SQNR) and the model outputs of both runs."""
    proto, pairs = switch.exposing(p.tensor for p in points if p.kind == "activation")
    inputs = {i.name for i in proto.graph.input}
    exposed = (n for pair in pairs.values() for n in pair if n not in inputs)
    names = list(dict.fromkeys([*switch.outputs, *exposed]))
    sess = session(proto, optimize=False)
    off_feeds, on_feeds = switch.feeds_for(QuantPlan())[0], switch.feeds_for(plan)[0]
    sums = {t: np.zeros(3) for t in pairs}
    runs: list[dict[str, list[np.ndarray]]] = [{o: [] for o in switch.outputs} for _ in range(2)]
    bar = Progress("debug: FP32 and fully quantized", len(batches), shown, "batches")
    for done, batch in enumerate(batches, 1):
        off = {**batch, **dict(zip(names, sess.run(names, {**batch, **off_feeds}), strict=True))}
        on = {**batch, **dict(zip(names, sess.run(names, {**batch, **on_feeds}), strict=True))}
        for tensor, (x, dq) in pairs.items():
            ref = off[x].astype(np.float64)
            sums[tensor] += [np.sum(ref * ref), np.sum((ref - off[dq]) ** 2), np.sum((ref - on[dq]) ** 2)]
        for values, run in zip((off, on), runs, strict=True):
            for o in switch.outputs:
                run[o].append(values[o])
        bar.update(done)
    bar.close()
    tensors = {t: (_db(s[0], s[1]), _db(s[0], s[2])) for t, s in sums.items()}
    off_out, on_out = ({o: np.concatenate(v) for o, v in run.items()} for run in runs)
    return tensors, off_out, on_out


def _db(signal: float, noise: float) -> float:
    return math.inf if noise <= 0 else 10.0 * math.log10(max(signal, 1e-30) / noise)


def _keep(mask: PaddingMask | None) -> dict[str, np.ndarray]:
    """Output → the [N, S] positions it is measured on (outputs not under the mask: everywhere)."""
    return {} if mask is None else {name: mask.keep for name in mask.outputs}


def _parts(reference: dict[str, np.ndarray], keep: dict[str, np.ndarray]) -> dict[str, Part]:
    """What the build's verdict judges: each output, and each scale group of an unmasked output's
    channels (``metrics.judged_parts``: a detector's class scores apart from its box pixels)."""
    return {label: (name, idx) for label, (name, idx) in judged_parts(reference).items()
            if idx is None or name not in keep}


def _part_sqnr(parts: dict[str, Part], ref: dict[str, np.ndarray], got: dict[str, np.ndarray],
               keep: dict[str, np.ndarray]) -> dict[str, float]:
    return {label: _sqnr(ref[name], got[name], keep.get(name)) if idx is None else
            _sqnr(np.take(ref[name], idx, axis=1), np.take(got[name], idx, axis=1))
            for label, (name, idx) in parts.items()}


def _sqnr(ref: np.ndarray, got: np.ndarray, keep: np.ndarray | None = None) -> float:
    if keep is not None:
        ref, got = ref[keep], got[keep]
    err = ref.astype(np.float64) - got.astype(np.float64)
    return _db(float(np.sum(ref.astype(np.float64) ** 2)), float(np.sum(err * err)))


def _check_same_function(reference: dict[str, np.ndarray], source: dict[str, np.ndarray],
                         folder: BuildFolder) -> None:
    """The build's own FP32 model (trt: after boosters) must compute what MODEL computes."""
    for name, ref in reference.items():
        if ref.shape != source[name].shape or _sqnr(ref, source[name]) < _SAME_FUNCTION_DB:
            what = folder.source_path.name if folder.source_path else "the model the plan refers to"
            raise BuildFolderError(f"output '{name}' of MODEL differs from {what} in {folder.path}: MODEL is "
                                   "not "
                                   "the model this folder was built from")


def _output_table(parts: dict[str, Part], reference: dict[str, np.ndarray], deployed: dict[str, np.ndarray],
                  off: dict[str, np.ndarray], on: dict[str, np.ndarray],
                  folder: BuildFolder, keep: dict[str, np.ndarray]) -> dict[str, dict[str, float]]:
    built = folder.verification.get("outputs", {})
    accumulated, replayed = _part_sqnr(parts, reference, deployed, keep), _part_sqnr(parts, off, on, keep)
    table: dict[str, dict[str, float]] = {}
    for label, (name, idx) in parts.items():
        table[label] = {"accumulated_sqnr_db": accumulated[label], "reference_qdq_sqnr_db": replayed[label]}
        verified = built.get(name) or {}
        if idx is not None:
            channels = channel_ranges(idx)
            verified = next((g for g in verified.get("groups", ()) if g.get("channels") == channels), {})
        if "sqnr_db" in verified:
            table[label]["build_verification_sqnr_db"] = float(verified["sqnr_db"])
    return table


def _local(switch: SwitchModel, points: list[QuantPoint], plan: QuantPlan, samples: SampleSet,
           batch_size: int, parts: dict[str, Part], keep: dict[str, np.ndarray],
           shown: bool) -> dict[str, dict[str, float]]:
    """Each point alone (output → SQNR dB, over ``keep``'s positions where given), as the sensitivity
    analysis runs its variants: one segmented switch model."""
    plans = {p.tensor: p.only(plan) for p in points}
    firsts = {t: switch.feeds_for(single)[1] for t, single in plans.items()}
    switch.plan_segments(firsts.values(), min(8, max(1, len(plans) // 6)))
    bound = switch.bind(list(samples.batches(batch_size)))
    bar = Progress("debug: one point at a time", len(plans), shown)
    results: dict[str, dict[str, float]] = {}

    def measure(bound: BoundSamples, single: QuantPlan) -> dict[str, float]:
        return _part_sqnr(parts, bound.reference, bound.run(single), keep)

    with ThreadPoolExecutor(max_workers=workers(), thread_name_prefix="dsqc-debug") as pool:
        futures = {pool.submit(measure, bound, plans[t]): t for t in sorted(plans, key=firsts.__getitem__)}
        for done, future in enumerate(as_completed(futures), 1):
            results[futures[future]] = future.result()
            bar.update(done)
    bar.close()
    return results


def _rank(rows: list[PointResult]) -> None:
    """Rank every row but the parts of a joint point by local error; a part takes its joint's rank."""
    ranked = sorted((r for r in rows if r.point.part_of is None),
                    key=lambda r: (r.local_worst, r.point.position))
    for rank, row in enumerate(ranked, 1):
        row.rank = rank
    joint_rank = {r.point.tensor: r.rank for r in ranked if r.point.kind == JOINT}
    for row in rows:
        if row.point.part_of is not None:
            row.rank = joint_rank[row.point.part_of]


def _local_tensor(switch: SwitchModel, point: QuantPoint, plan: QuantPlan,
                  tensors: dict[str, tuple[float, float]]) -> float | None:
    if point.kind == JOINT:
        return None
    if point.kind == "activation":
        return tensors[point.tensor][0]
    feeds = switch.feeds_for(point.only(plan))[0]
    const = next(c for c in switch.consts if c.tensor == point.tensor and c.node == point.consumers[0][0])
    return _sqnr(const.value, feeds[const.feed])
