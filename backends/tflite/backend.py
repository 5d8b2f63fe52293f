"""The ``tflite`` target: ``<name>.int8.tflite`` (or ``<name>.fp32.tflite`` with ``--precision fp32``).

Lower the QDQ model, write the flatbuffer, validate it, then run it in LiteRT (XNNPACK) against the
FP32 ONNX model and the QDQ model, and time it against the float32 ``.tflite`` of the same graph.

Options (``job.options``): ``io`` "float" | "int8" (quantized model inputs/outputs), ``signature``
(write a SignatureDef, default true), ``input_layout`` "nchw" | "nhwc", ``verify`` and ``latency``
(default true), ``write_fp32`` (also write the float32 file in an int8 build), ``float_undelegated``
(default true: the planner keeps in float the int8 ops XNNPACK does not take, attention's BATCH_MATMUL of
two activations and SOFTMAX; false plans them int8, for runtimes that run every op in int8).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import onnx

from dsqc.calibration.data import fixed_batch, model_inputs
from dsqc.quant.dynamic import dynamic_nodes
from dsqc.verify import latency_sample

from ..registry import (
    Backend,
    BackendOutput,
    Block,
    CheckRow,
    Feeds,
    Lowered,
    LoweringJob,
    Replay,
    ReportView,
    WrittenBuild,
    number,
    register,
)
from . import dynamic, runtime, verify
from .graph import Graph
from .lower import LowerOptions, LowerStats, lower
from .profile import tflite_profile
from .summary import speed_warnings, summary_lines
from .validate import validate
from .writer import serialize

if TYPE_CHECKING:
    from dsqc.driver.build_types import BuildResult
    from dsqc.quant.profile import TargetProfile

log = logging.getLogger(__name__)


def _choice(default: Any, *choices: Any) -> Any:
    return field(default=default, metadata={"choices": choices})


@dataclass
class TfliteOptions:
    io: str = _choice("float", "float", "int8")
    input_layout: str = _choice("nchw", "nchw", "nhwc")
    signature: bool = True
    verify: bool = True
    latency: bool = True
    write_fp32: bool = False
    float_undelegated: bool = True


@dataclass
class Built:
    blob: bytes
    stats: LowerStats
    ops: dict[str, int]
    graph: Graph
    output_scales: dict[str, float]
    seconds: float


def build_tflite(model: onnx.ModelProto, opts: TfliteOptions, io: str | None = None) -> Built:
    """Lower, serialize and validate one model (QDQ → int8 file, FP32 → float32 file; run-time
    quantized nodes of a dynamic build → hybrid ops, ``dynamic.py``)."""
    start = time.perf_counter()
    lowered = LowerOptions(io=io or opts.io, input_layout=opts.input_layout)
    model, hybrid = dynamic.strip(model)
    graph, stats = lower(model, lowered)
    if hybrid:
        left, static = dynamic.hybridize(graph, hybrid)
        stats.notes.extend(f"tflite: '{name}' stays float: no hybrid kernel for its lowering"
                           for name in left)
        stats.notes.extend(f"tflite: '{name}' (dynamic in the plan) runs as a static int8 op: its input and "
                           "output are int8 tensors of static neighbours" for name in static)
        stats.float_nodes = [n for n in stats.float_nodes if n not in hybrid or n in left]
    names_in = [i.name for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    names_out = [o.name for o in model.graph.output]
    blob = serialize(graph, opts.signature, names_in, names_out)
    validate(blob)
    scales = {}
    for name, idx in zip(names_out, graph.outputs, strict=True):
        producer = graph.producer(idx)
        source = graph.tensors[producer.inputs[0]] if producer and producer.kind == "DEQUANTIZE" else \
            graph.tensors[idx]
        if source.quant is not None and source.quant.per_tensor:
            scales[name] = float(source.quant.scale[0])
    return Built(blob, stats, graph.histogram(), graph, scales, time.perf_counter() - start)


def _describe(built: Built, path: Path, plan: Any = None) -> dict[str, Any]:
    s = built.stats
    planned = getattr(plan, "nodes", None) or {}
    floats = {name: f"{planned[name].reason} ({s.float_reasons.get(name, '')})" if name in planned and
              planned[name].precision.value != "int8" else s.float_reasons.get(name, "")
              for name in s.float_nodes}
    return {"file": str(path), "bytes": len(built.blob), "ops": built.ops, "lower_write_s": built.seconds,
            "edge_transposes": s.edge_transposes, "interior_transposes": s.interior_transposes,
            "float_nodes": floats, "requantized": s.requantize, "notes": s.notes,
            "undelegated_int8": s.undelegated}


@dataclass(frozen=True)
class TimedFiles:
    """What LiteRT timed: the int8 file against the float32 file of the same graph, on one sample."""

    int8: bytes
    float32: bytes
    sample: list[np.ndarray]
    nhwc_in: bool


@dataclass
class TfliteLowered(Lowered):
    """The flatbuffers to write, in order (file name, bytes), and what was timed (``None``: not timed)."""

    files: list[tuple[Path, bytes]] = field(default_factory=list)
    timed: TimedFiles | None = None


@register
class TfliteBackend(Backend):
    name = "tflite"
    description = "int8 .tflite flatbuffer for LiteRT/XNNPACK (ARM NEON), verified in the LiteRT interpreter"
    profile = tflite_profile(TfliteOptions().float_undelegated)  # the default options' profile
    options = TfliteOptions
    replay = Replay(description="the canonical QDQ model the .tflite was lowered from (report.json's plan "
                                "on MODEL) in ORT's reference Q/DQ semantics, not the LiteRT interpreter")
    runtime_name = "LiteRT interpreter (XNNPACK)"
    artifact_suffixes = (".int8.tflite", ".fp32.tflite")

    def profile_for(self, options: dict[str, Any]) -> TargetProfile:
        """``-B float_undelegated`` (default true) plans XNNPACK's missing int8 kernels float; ``-B
        io=int8`` or ``float_undelegated=false`` refuse dynamic mode."""
        opts: TfliteOptions = self.typed_options(options)
        return tflite_profile(opts.float_undelegated, opts.io)

    def lower(self, job: LoweringJob) -> TfliteLowered:
        """The flatbuffers, validated, run in LiteRT against FP32 and the QDQ model, and timed."""
        opts: TfliteOptions = self.typed_options(job.options)
        fp32 = build_tflite(job.fp32, opts, io="float")
        metrics: dict[str, Any] = {}
        lowered = TfliteLowered(job, metrics={"tflite": metrics})
        nhwc_in = opts.input_layout == "nhwc"
        if job.qdq is None or opts.write_fp32:
            path = Path(f"{job.name}.fp32.tflite")
            lowered.files.append((path, fp32.blob))
            metrics["fp32"] = _describe(fp32, path)
        if job.qdq is None:
            feeds = job.eval_feeds or verify.random_feeds(job.fp32)
            if opts.verify and feeds:
                check = verify.outputs_vs_onnx(fp32.blob, job.fp32, feeds, nhwc_in)[0]
                check["inputs"] = "held-out samples" if job.eval_feeds else "random normal (no --calib given)"
                metrics["fp32"]["verification"] = check
            return lowered
        int8 = build_tflite(job.qdq, opts)
        path = Path(f"{job.name}.int8.tflite")
        lowered.files.append((path, int8.blob))
        metrics["int8"] = _describe(int8, path, job.plan)
        run_time = bool(dynamic_nodes(job.qdq))  # activations quantized at run time: no integer reference
        if opts.verify and not job.eval_feeds and run_time:  # unverified build: LiteRT must still run it
            runs = verify.outputs_vs_onnx(int8.blob, job.fp32, verify.random_feeds(job.fp32), nhwc_in)[1]
            metrics["runs_in_litert"] = {"inputs": "random normal (no held-out data: not a verification)",
                                         "finite": all(bool(np.isfinite(v).all()) for v in runs.values())}
        if opts.verify and job.eval_feeds:
            check, got = verify.outputs_vs_onnx(int8.blob, job.fp32, job.eval_feeds, nhwc_in,
                                                  mask_padding=job.mask_padding)
            check["vs_qdq"] = verify.outputs_vs_qdq(got, job.qdq, job.eval_feeds, int8.output_scales)
            if not nhwc_in and not run_time:
                first = latency_sample(job.fp32, job.eval_feeds[0])
                names = [i.name for i in job.qdq.graph.input]
                check["tensors"] = verify.tensors_vs_references(int8.graph, job.qdq, first,
                                                                [n for n in names if n in first])
            metrics["verification"] = check
        if opts.latency and job.measure_latency and job.eval_feeds:  # --no-latency: reproducible
            names = [i.name for i in job.fp32.graph.input if i.name in job.eval_feeds[0]]
            first = latency_sample(job.fp32, job.eval_feeds[0])
            sample = [first[n] for n in names]
            metrics["latency_ms"] = verify.latency(int8.blob, fp32.blob, sample, nhwc_in)
            lowered.timed = TimedFiles(int8.blob, fp32.blob, sample, nhwc_in)
        notes = [f"tflite: {len(int8.stats.float_nodes)} node(s) run in float: "
                 f"{', '.join(int8.stats.float_nodes[:5])}"] if int8.stats.float_nodes else []
        if int8.stats.interior_transposes:
            count = len(int8.stats.interior_transposes)
            notes.append(f"tflite: {count} layout transpose(s) inside the graph")
        lowered.notes.extend(notes + int8.stats.notes)
        for note in lowered.notes:
            log.info("%s", note)
        return lowered

    def write(self, lowered: Lowered, out: Path) -> BackendOutput:
        assert isinstance(lowered, TfliteLowered)
        for path, blob in lowered.files:
            (out / path).write_bytes(blob)
        return BackendOutput(artifacts=[path for path, _ in lowered.files], metrics=lowered.metrics,
                             notes=list(lowered.notes))

    def summary_lines(self, result: BuildResult) -> list[str]:
        return summary_lines(result.metrics.get(self.name) or {})

    def latency_ratio(self, lowered: Lowered) -> float | None:
        """LiteRT's int8 ``.tflite`` time over its float32 twin's (1 thread, XNNPACK), when timed."""
        timed = (lowered.metrics.get(self.name) or {}).get("latency_ms")
        return float(timed["int8"]) / max(float(timed["float32"]), 1e-9) if timed else None

    def latency_ratios_side_by_side(self, lowereds: Sequence[Lowered]) -> list[float] | None:
        """Each build's int8 ``.tflite`` CPU time over the first build's float32 file, all timed in one
        interleaved LiteRT run (1 thread, XNNPACK)."""
        timed = [lw.timed for lw in lowereds if isinstance(lw, TfliteLowered) and lw.timed is not None]
        if not timed or len(timed) != len(lowereds):
            return None
        first = timed[0]
        cpu = [t.cpu_ms for t in runtime.compare_latency([first.float32, *(t.int8 for t in timed)],
                                                          first.sample, first.nhwc_in)]
        return [ms / max(cpu[0], 1e-9) for ms in cpu[1:]]

    def float_nodes(self, result: BuildResult) -> dict[str, str]:
        lowered = ((result.metrics.get(self.name) or {}).get("int8") or {}).get("float_nodes") or []
        return dict.fromkeys(lowered, "tflite lowering: its output has no QuantizeLinear in the QDQ model, "
                             "so the .tflite computes it in float")

    def speed_warnings(self, result: BuildResult) -> list[str]:
        return speed_warnings(result.metrics.get(self.name) or {})

    def runtime_outputs(self, qdq: onnx.ModelProto, options: dict[str, Any],
                        feeds: list[Feeds]) -> dict[str, np.ndarray] | None:
        """``qdq`` lowered to an int8 ``.tflite`` and run by LiteRT (XNNPACK), a sample (or the batch the
        model fixes) a run."""
        if not runtime.available():
            return None
        opts: TfliteOptions = self.typed_options(options)
        built = build_tflite(qdq, opts)
        names = [i.name for i in qdq.graph.input if i.name in feeds[0]]
        batch = fixed_batch(model_inputs(qdq)) or 1
        got = runtime.run(built.blob, runtime.samples(feeds, names, batch),
                          nhwc_in=opts.input_layout == "nhwc")
        return dict(zip([o.name for o in qdq.graph.output], got, strict=True))

    def verdict_outputs(self, metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
        """LiteRT's run of the ``.tflite`` on the held-out samples."""
        litert = (metrics.get(self.name) or {}).get("verification") or {}
        return {f"{name} (LiteRT)": m for name, m in (litert.get("outputs") or {}).items()}

    def report_view(self, report: dict[str, Any]) -> ReportView:
        """LiteRT's own run of the held-out samples, its tensors against dsqc's integer reference, the
        file's size and LiteRT latency."""
        m = (report.get("metrics") or {}).get(self.name) or {}
        ver = m.get("verification") or {}
        view = ReportView(runtime="LiteRT interpreter", runtime_outputs=dict(ver.get("outputs") or {}),
                          runtime_detections=ver.get("detections"))
        ref = (ver.get("tensors") or {}).get("vs_integer_reference") or {}
        if ref.get("tensors"):
            ok = ref["tensors_exact"] == ref["tensors"]
            alone = ref.get("per_op") or {}
            if alone.get("ops"):
                view.checks.append(CheckRow("LiteRT vs dsqc integer reference, each op fed LiteRT's inputs",
                                            "pass" if alone["max_lsb"] <= 1 else "warn",
                                            f"{alone['ops_exact']}/{alone['ops']} ops bit-exact, "
                                            f"max {alone['max_lsb']} LSB"))
            view.checks.append(CheckRow("LiteRT vs dsqc integer reference", "pass" if ok else "warn",
                                        f"{ref['tensors_exact']}/{ref['tensors']} tensors bit-exact, "
                                        f"max {ref['max_lsb']} LSB"))
        if (m.get("int8") or {}).get("bytes"):
            view.measured.append((".tflite bytes", f"{m['int8']['bytes']:,}"))
        if m.get("latency_ms"):
            t = m["latency_ms"]
            view.measured.append(("latency, LiteRT XNNPACK 1 thread",
                                  f"float32 {number(t['float32'])} ms, int8 {number(t['int8'])} ms"))
        if ver:
            try:
                value = float(ver.get("min_sqnr_db", "nan"))  # report.json writes inf as "inf"
            except (TypeError, ValueError):
                value = float("nan")
            view.fleet_check = "LiteRT ran" if value != value else f"LiteRT min SQNR {value:.2f} dB"
        return view

    def howto(self, report: dict[str, Any]) -> list[Block]:
        found = self.runtime_artifact([Path(str(a)) for a in report.get("artifacts", [])])
        model = found.as_posix() if found else "model.tflite"
        code = ("import numpy as np\nfrom ai_edge_litert.interpreter import Interpreter\n"
                f"it = Interpreter(model_path={model!r}, num_threads=1)   # XNNPACK by default\n"
                "it.allocate_tensors()\n"
                "inp, out = it.get_input_details()[0], it.get_output_details()[0]\n"
                "x = np.load('check/input_0.npy')[:1]    # one held-out sample from this bundle\n"
                "it.set_tensor(inp['index'], x.astype(inp['dtype']))\n"
                "it.invoke()\nprint(it.get_tensor(out['index']))\n")
        android = ("// Android (Kotlin), LiteRT's org.tensorflow.lite.Interpreter\n"
                   "// (loadModelFile: your app's memory-mapped asset loader)\n"
                   f"val interpreter = Interpreter(loadModelFile(\"{model}\"),\n"
                   "                              Interpreter.Options().setNumThreads(4))\n"
                   "interpreter.run(input, output)\n")
        return [Block("text", "Python (LiteRT):"), Block("code", code), Block("text", "On the device:"),
                Block("code", android)]

    def run_artifact(self, build: WrittenBuild, feeds: list[Feeds]) -> dict[str, np.ndarray] | None:
        """The ``.tflite`` file in the LiteRT interpreter (XNNPACK), one sample (or the batch the file
        fixes) a run. Inputs in NHWC when ``-B input_layout=nhwc`` says so or, read back from a bundle,
        when the file's input shape is the NHWC form of the fed one."""
        path = self.runtime_artifact(build.artifacts)
        if not runtime.available() or path is None:
            return None
        blob = (build.folder / path).read_bytes()
        names = [n for n in build.inputs if n in feeds[0]]
        details = runtime.interpreter(blob).get_input_details()
        shapes = [tuple(int(d) for d in detail["shape"]) for detail in details]
        layout = build.options.get("input_layout")
        nhwc_in = layout == "nhwc" if layout else _fed_nhwc(shapes[0], feeds[0][names[0]])
        batch = shapes[0][0] if shapes[0] and shapes[0][0] > 0 else 1
        got = runtime.run(blob, runtime.samples(feeds, names, batch), nhwc_in=nhwc_in)
        return dict(zip(build.outputs, got, strict=True))


def _fed_nhwc(shape: tuple[int, ...], fed: np.ndarray) -> bool:
    """The file takes NHWC where the fed (ONNX, NCHW) input is 4-D and does not fit as it is."""
    return fed.ndim == 4 and fed.shape[1:] != shape[1:] and fed.transpose(0, 2, 3, 1).shape[1:] == shape[1:]
