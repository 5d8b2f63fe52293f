"""``HlsBackend``: lower the QDQ model to dsqc's integer program and write ``OUT/hls/`` (C99 project).

``backend_options``: ``parallelism`` (MACs per cycle per layer: UNROLL/ARRAY_PARTITION factor, default
1), ``interface`` (``m_axi`` | ``axis``), ``power_of_two_scales`` (shift-only requantization),
``activation_bits`` (8 | 16: int16 activations with int8 weights), ``residual_bits`` (16 | 8: a
transformer's residual stream, the Adds a LayerNorm reads; default 16),
``clock_mhz`` (latency estimate and Tcl clock, default 200), ``part`` (Tcl ``set_part``),
``tb_vectors`` (testbench vectors, default 16), ``csim`` (run ``make csim`` when gcc exists, default
true).
"""

from __future__ import annotations

import logging
import re
import shutil
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import onnx

from dsqc.errors import DsqcError, RecipeError, UnsupportedError
from dsqc.integer import MissingLowerings, Program, lower, quantize_inputs, run
from dsqc.integer.compare import ORT_LEVELS, Stats, compare_with_ort, per_op_with_ort
from dsqc.integer.reference import dequantize_outputs
from dsqc.quant.profile import TargetProfile
from dsqc.quant.spec import Precision

from ..registry import (
    ArtifactCheck,
    Backend,
    BackendOutput,
    Block,
    CheckRow,
    Feeds,
    Lowered,
    LoweringJob,
    Replay,
    ReportView,
    SelfCheck,
    WiderBuild,
    WrittenBuild,
    number,
    register,
)
from .c_writer import INTERFACES, Firmware, Port, write_firmware
from .csim import run_csim, toolchain_available
from .estimates import Estimates, estimate
from .pow2 import is_pow2_plan, snap_to_pow2
from .profile import HLS_PROFILE, hls_profile
from .project import DEFAULT_PART, build_tcl, makefile, testbench
from .readme import readme

if TYPE_CHECKING:
    from dsqc.driver.build_types import BuildResult

log = logging.getLogger(__name__)

_PART = re.compile(r"[A-Za-z0-9_.\-]{1,64}")


@dataclass(frozen=True)
class HlsOptions:
    parallelism: int = 1
    interface: str = "m_axi"
    power_of_two_scales: bool = False
    activation_bits: int = 8
    residual_bits: int = 16
    clock_mhz: float = 200.0
    part: str = DEFAULT_PART
    tb_vectors: int = 16
    csim: bool = True

    def __post_init__(self) -> None:
        """Ranges and formats; types are the option parser's (``backends/options.py``)."""
        if not 1 <= self.parallelism <= 4096:
            raise RecipeError(f"hls: parallelism must be an integer in 1..4096, got {self.parallelism!r}")
        if self.interface not in INTERFACES:
            raise RecipeError(f"hls: interface must be one of {', '.join(INTERFACES)}, "
                              f"got {self.interface!r}")
        if self.activation_bits not in (8, 16):
            raise RecipeError(f"hls: activation_bits must be 8 or 16, got {self.activation_bits!r}")
        if self.residual_bits not in (8, 16):
            raise RecipeError(f"hls: residual_bits must be 8 or 16, got {self.residual_bits!r}")
        if not 0 < self.clock_mhz <= 2000:
            raise RecipeError(f"hls: clock_mhz must be in (0, 2000], got {self.clock_mhz!r}")
        if not _PART.fullmatch(self.part):
            raise RecipeError(f"hls: part must match {_PART.pattern}, got {self.part!r}")
        if self.tb_vectors < 1:
            raise RecipeError(f"hls: tb_vectors must be a positive integer, got {self.tb_vectors!r}")


@dataclass
class HlsLowered(Lowered):
    """The C project as text, with what ``write`` needs to check and describe it."""

    opts: HlsOptions = field(default_factory=HlsOptions)
    program: Program | None = None
    firmware: Firmware | None = None
    files: dict[str, str] = field(default_factory=dict)
    estimate: Estimates | None = None
    vectors: int = 0
    lsb: dict[str, Stats] = field(default_factory=dict)


@register
class HlsBackend(Backend):
    name = "hls"
    description = "integer-only C99 project for Vitis/Intel HLS (int8, bit-exact with dsqc's reference)"
    profile: ClassVar[TargetProfile] = HLS_PROFILE
    options = HlsOptions
    replay = Replay(description="the canonical QDQ model the C was lowered from (report.json's plan on "
                                "MODEL) in ORT's reference Q/DQ semantics, not the C testbench")
    runtime_name = "gcc-compiled testbench (make csim)"
    self_checking = SelfCheck("hls/tb/testbench.c", "make csim (gcc)", "the testbench compares the C against "
                              "dsqc's integer reference vectors bit for bit")

    @classmethod
    def profile_for(cls, options: dict[str, Any]) -> TargetProfile:
        """The profile the planner should use for these ``backend_options``."""
        return hls_profile(int(options.get("activation_bits", 8)), bool(options.get("power_of_two_scales")),
                           int(options.get("residual_bits", 16)))

    def wider(self, options: dict[str, Any]) -> WiderBuild | None:
        """int16 activations (int8 weights), unless they are already asked for."""
        if int(options.get("activation_bits", 8)) == 16:
            return None
        return WiderBuild("-B activation_bits=16", "every activation int16, twice the activation memory")

    def lower(self, job: LoweringJob) -> HlsLowered:
        """The integer program, its reference run against ORT, and the project's files as text."""
        opts: HlsOptions = self.typed_options(job.options)
        if job.qdq is None or job.plan is None:
            raise UnsupportedError("hls: the target is integer-only; build with --precision int8")
        notes: list[str] = []
        qdq = job.qdq
        if opts.power_of_two_scales and not is_pow2_plan(job.plan):
            qdq, _ = snap_to_pow2(job.fp32, job.plan)
            notes.append("hls: plan scales snapped to powers of two for shift-only requantization")
        try:
            program = lower(qdq, job.name)
        except MissingLowerings as exc:  # an op the C has no layer for
            raise UnsupportedError(f"hls: {exc}; the HLS C covers these layers only: build this model for "
                                   "--target onnx, tflite or trt, or the part the FPGA runs with --outputs "
                                   "T1,T2 (tensors before that node)") from exc
        except UnsupportedError as exc:  # a form of a supported op the C does not take (a detector's decode)
            raise UnsupportedError(f"{exc} (--outputs T1,T2 builds the part of the model before it)") from exc
        notes += [f"hls: {note}" for note in program.notes]
        float_feeds, synthetic = _eval_feeds(job, program, opts.tb_vectors)
        if synthetic:
            notes.append("hls: no evaluation data; testbench vectors are random integer inputs")
        q_inputs = quantize_inputs(program, float_feeds)
        expected = run(program, q_inputs)
        lsb = _compare_with_ort(qdq, program, float_feeds, expected, notes)
        count = min(opts.tb_vectors, len(next(iter(q_inputs.values()))))
        fw = write_firmware(program, job.name, opts.parallelism, opts.interface)
        files = dict(fw.files)
        files["tb/testbench.c"] = testbench(fw, {k: v[:count] for k, v in q_inputs.items()},
                                            {k: v[:count] for k, v in expected.items()})
        files["Makefile"] = makefile(fw)
        files["build.tcl"] = build_tcl(fw, opts.part, float(opts.clock_mhz))
        est = estimate(program, opts.parallelism, float(opts.clock_mhz))
        metrics: dict[str, Any] = {"top": fw.top, "ops": len(program.ops), "lsb_vs_ort": lsb,
                                   "eval_samples": len(next(iter(q_inputs.values()))),
                                   "estimates": est.to_dict(), "options": opts.__dict__,
                                   "ports": [_port(p) for p in fw.ports],
                                   "requant": _requant_table(program), "islands": program.islands}
        return HlsLowered(job, metrics={"hls": metrics}, notes=notes, opts=opts, program=program,
                          firmware=fw, files=files, estimate=est, vectors=count, lsb=lsb)

    def write(self, lowered: Lowered, out: Path) -> BackendOutput:
        """The project files, then ``make csim`` and the object checks on them, then the README."""
        assert isinstance(lowered, HlsLowered)
        opts, fw, est, program = lowered.opts, lowered.firmware, lowered.estimate, lowered.program
        assert fw is not None and est is not None and program is not None
        root = out / "hls"
        for rel, text in lowered.files.items():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_text(text)
        metrics = dict(lowered.metrics["hls"])
        notes = list(lowered.notes)
        checks, codes = self._check(root, lowered.vectors, opts, metrics, notes)
        checks.append(_lsb_line(lowered.lsb))
        (root / "README.md").write_text(readme(fw, program, est, opts.__dict__, checks))
        artifacts = [Path("hls") / rel for rel in sorted([*lowered.files, "README.md"])]
        log.info("hls: %d layers, %d MACs, csim %s", len(program.ops), est.macs, metrics["csim"]["status"])
        outputs = _dequantize(codes, metrics["ports"]) if codes is not None else None
        return BackendOutput(artifacts=artifacts, metrics={"hls": metrics}, notes=notes,
                             runtime_outputs=outputs)

    def requantization(self, result: BuildResult) -> dict[str, dict[str, list[int]]]:
        return dict((result.metrics.get(self.name) or {}).get("requant") or {})

    def run_artifact(self, build: WrittenBuild, feeds: list[Feeds]) -> dict[str, np.ndarray] | None:
        """``make csim``: the C compiled by gcc runs the testbench's own vectors (the first
        ``tb_vectors`` held-out samples); its int8 outputs dequantized with the ports' scales. The
        build's own ``make csim`` run of the same files is reused when it is at hand."""
        if build.runtime_outputs is not None:
            return build.runtime_outputs
        ports = build.metrics.get("hls", {}).get("ports")
        if not toolchain_available() or not ports:
            return None
        result = run_csim(build.folder / "hls")
        if result.outputs is None:
            raise DsqcError(f"hls: `make csim` in {build.folder / 'hls'} wrote no outputs: "
                            f"{result.log[-300:]!r}")
        return _dequantize(result.outputs, ports)

    def self_check(self, build: WrittenBuild) -> ArtifactCheck:
        """``make csim`` on a copy of ``hls/``: the testbench compares the C with dsqc's integer reference
        vectors; passes only when it ran, exited 0 and reported 0 mismatching values (bit-exact)."""
        if not all(shutil.which(tool) for tool in ("gcc", "make")):
            return ArtifactCheck(True, "not re-run: gcc/make not found here", "make csim")
        result = run_csim(build.folder / "hls")
        if not result.passed:
            return ArtifactCheck(False, f"make csim failed ({result.mismatches} mismatching values): "
                                        f"{result.log.strip()[-200:]!r}", "make csim")
        return ArtifactCheck(True, f"{result.vectors} vectors, 0 mismatching values (bit-exact)", "make csim")

    def report_view(self, report: dict[str, Any]) -> ReportView:
        """``make csim`` against the integer reference, that reference against ORT, the estimate; the
        parameter map shows each scale's fixed-point form."""
        m = (report.get("metrics") or {}).get(self.name) or {}
        view = ReportView(fixed_point=True)
        csim = m.get("csim") or {}
        if "vectors" in csim:
            view.checks.append(CheckRow("make csim (gcc, strict C99) vs integer reference",
                                        "pass" if csim["status"] == "bit-exact" else "fail",
                                        f"{csim['status']}: {csim['mismatching_values']} mismatching values "
                                        f"over {csim['vectors']} vectors"))
        if csim:
            view.fleet_check = f"csim {csim.get('status')}" + (
                f", {csim['mismatching_values']} mismatches" if "mismatching_values" in csim else "")
        for level, stats in (m.get("lsb_vs_ort") or {}).items():
            if "exact" in stats:
                measured = f"{stats['exact']}/{stats['values']} exact, max {stats['max_lsb']} LSB"
                view.checks.append(CheckRow(f"integer reference vs ORT ({level})",
                                            "pass" if stats["max_lsb"] <= 1 else "warn", measured))
        est = m.get("estimates") or {}
        if est:
            view.measured.append(("HLS estimate", f"{est.get('cycles', 0):,} cycles ≈ "
                                  f"{number(est.get('latency_us'))} µs at {number(est.get('clock_mhz'))} "
                                  f"MHz; {est.get('macs', 0):,} MACs"))
        return view

    def howto(self, report: dict[str, Any]) -> list[Block]:
        hls = (report.get("metrics") or {}).get(self.name) or {}
        options = hls.get("options") or {}
        shell = ("cd hls\nmake csim                # gcc C simulation: the testbench checks every vector "
                 "bit for bit\n"
                 "vitis_hls -f build.tcl   # Vitis HLS: csim, csynth, cosim, export IP "
                 f"(part {options.get('part', '?')}, {options.get('clock_mhz', '?')} MHz)\n")
        return [Block("text", f"C99 project in `hls/`, top function `{hls.get('top', 'top')}`, interface "
                      f"`{options.get('interface', '?')}`:"), Block("code", shell),
                Block("note", "Intel HLS: compile `hls/firmware/*.c` with i++ and the same testbench; "
                      "`hls/README.md` describes the interface and the estimates.")]

    def summary_lines(self, result: BuildResult) -> list[str]:
        m = result.metrics.get(self.name) or {}
        c, e = m.get("csim"), m.get("estimates", {})
        if not c:
            return []
        if "vectors" in c:
            lines = [f"hls csim (gcc, strict C99): {c['status']}, {c['mismatching_values']} mismatching "
                     f"values over {c['vectors']} vectors; max stack frame {c['max_stack_bytes']} B"]
        else:
            lines = [f"hls csim (gcc, strict C99): {c['status']}"]
        if e:
            lines.append(f"  estimate: {e.get('cycles', 0):,} cycles ≈ {e.get('latency_us', 0):.0f} µs at "
                         f"{e.get('clock_mhz', 0):.0f} MHz")
        planned = result.plan.nodes if result.plan else {}
        ways = Counter(how for n, how in (m.get("islands") or {}).items()  # float, not shape arithmetic
                       if n in planned and planned[n].precision is not Precision.INT8
                       and not planned[n].integer_only)
        if ways:
            kinds = ", ".join(f"{how} {count}" for how, count in ways.most_common())
            lines.append(f"  float in the QDQ model, integer in the C: {sum(ways.values())} nodes ({kinds}; "
                         "report.json: metrics.hls.islands)")
        return lines

    def integer_nodes(self, result: BuildResult) -> dict[str, str]:
        return dict((result.metrics.get(self.name) or {}).get("islands") or {})

    @staticmethod
    def _check(root: Path, count: int, opts: HlsOptions, metrics: dict[str, Any],
               notes: list[str]) -> tuple[list[str], np.ndarray | None]:
        """``make csim`` and the object checks: README lines and the testbench's output codes."""
        if not opts.csim or not toolchain_available():
            metrics["csim"] = {"status": "skipped"}
            if opts.csim:
                notes.append("hls: gcc/make/nm not found; the C was not compiled or simulated")
            return [], None
        result = run_csim(root, inspect=True)
        if result.object_check is None:  # the testbench did not build or run
            raise DsqcError(f"hls: the generated C did not compile or run under `make csim` (a dsqc bug: "
                            f"please report it with the model); log tail: {result.log[-300:]!r}")
        obj = result.object_check
        metrics["csim"] = {"status": "bit-exact" if result.passed else "FAILED", "vectors": result.vectors,
                           "mismatching_values": result.mismatches,
                           "undefined_symbols": obj.undefined, "forbidden_symbols": obj.forbidden,
                           "stack_frames_static_only": obj.static_only,
                           "max_stack_bytes": max((b for _, b, _ in obj.stack), default=0)}
        if not result.passed:
            raise DsqcError(f"hls: C simulation is not bit-exact against the integer reference "
                            f"({result.mismatches} mismatching values); log tail: {result.log[-300:]!r}")
        if obj.forbidden or not obj.static_only:
            raise DsqcError(f"hls: firmware object uses {obj.forbidden or 'dynamic stack frames'}")
        lines = [f"`make csim`: {result.vectors} vectors, 0 mismatching values (bit-exact) — passed at build "
                 "time", f"`nm -u` on the -O0 object: {', '.join(obj.undefined) or 'no undefined symbols'}",
                 f"`-fstack-usage`: {len(obj.stack)} functions, all static frames, largest "
                 f"{metrics['csim']['max_stack_bytes']} bytes"]
        return lines, result.outputs


def _eval_feeds(job: LoweringJob, program: Program, count: int) -> tuple[dict[str, np.ndarray], bool]:
    """Float inputs for the reference, ORT and the testbench: the job's held-out data, or random codes."""
    names = [b.onnx_name for b in program.inputs]
    if job.eval_feeds and all(name in job.eval_feeds[0] for name in names):
        feeds = {n: np.concatenate([np.asarray(f[n], np.float32) for f in job.eval_feeds]) for n in names}
        return feeds, False
    rng = np.random.default_rng(0)
    infos = {b.onnx_name: program.tensors[b.tensor] for b in program.inputs}
    ints = {name: rng.integers(i.qmin, i.qmax + 1, (count, *i.shape[1:])).astype(i.dtype)
            for name, i in infos.items()}
    floats = dequantize_outputs(_as_outputs(program), ints)
    return floats, True


def _as_outputs(program: Program) -> Program:
    """A view of ``program`` whose outputs are its inputs (to dequantize random input codes)."""
    return Program(program.name, program.tensors, [], program.inputs, program.inputs)


_PER_OP_SAMPLES = 4  # each op's rounding against ORT: a few samples show it, all of them cost memory


def _compare_with_ort(qdq: onnx.ModelProto, program: Program, feeds: dict[str, np.ndarray],
                      expected: dict[str, np.ndarray], notes: list[str]) -> dict[str, Stats]:
    """Output LSBs against ORT (unfused and fused) and the worst single op (unfused)."""
    lsb = compare_with_ort(qdq, program, feeds, expected)
    per_op = per_op_with_ort(qdq, program, {k: v[:_PER_OP_SAMPLES] for k, v in feeds.items()})
    lsb["per_op_float_requant"] = {"max_lsb": max((s["max_lsb"] for s in per_op.values()), default=0),
                                   "off_by_1": sum(int(s["off_by_1"]) for s in per_op.values()),
                                   "values": sum(int(s["values"]) for s in per_op.values())}
    step = 256 if any(program.tensors[b.tensor].wide for b in program.outputs) else 1  # one int8 step
    if "error" in lsb["fused"]:
        notes.append(f"hls: ONNX Runtime could not build its optimized session of the QDQ model "
                     f"({lsb['fused']['error']}); the reference is checked against the unfused run")
    elif lsb["fused"]["max_lsb"] > step:
        notes.append(f"hls: ONNX Runtime's fused kernels differ from its unfused QDQ result by up to "
                     f"{lsb['fused']['max_lsb']} output LSB here (they requantize in their own arithmetic, "
                     "and on x86 without VNNI 8-bit dot products can saturate); the reference is checked "
                     "against the unfused run")
    return lsb


def _lsb_line(lsb: dict[str, Stats]) -> str:
    parts = [f"ORT {level}: {s['exact']}/{s['values']} exact, {s['off_by_1']} off by 1, "
             f"{s['off_by_more']} off by more (max {s['max_lsb']})" for level, s in lsb.items()
             if level in ORT_LEVELS and "exact" in s]
    op = lsb["per_op_float_requant"]
    return ("integer reference vs ONNX Runtime on the QDQ model, output LSBs: " + "; ".join(parts)
            + f". Each op alone (fed ORT's integer inputs): max {op['max_lsb']} LSB, {op['off_by_1']} of "
            f"{op['values']} values off by 1")


def _port(port: Port) -> dict[str, Any]:
    """A top-function port as the report (and ``run_artifact``) needs it."""
    return {"c_name": port.c_name, "onnx_name": port.onnx_name, "direction": port.direction,
            "size": port.size, "shape": list(port.shape), "scale": port.scale, "zero_point": port.zero_point,
            "ctype": port.ctype}


def _requant_table(program: Program) -> dict[str, dict[str, list[int]]]:
    """Output tensor → the integer multipliers and right shifts that requantize into it."""
    table = {}
    for op in program.ops:
        requant = getattr(op, "requant", None)
        if requant is not None and not requant.identity:
            table[op.output] = {"multiplier": [int(v) for v in np.ravel(requant.m)],
                                "shift": [int(v) for v in np.ravel(requant.n)]}
    return table


def _dequantize(codes: np.ndarray, ports: list[dict[str, Any]]) -> dict[str, np.ndarray]:
    """The testbench's output dump ([vectors, Σ output sizes], ports in order) as float outputs."""
    outputs, column = {}, 0
    for port in (p for p in ports if p["direction"] == "out"):
        block = codes[:, column:column + port["size"]]
        column += port["size"]
        real = (block - port["zero_point"]).astype(np.float32) * np.float32(port["scale"])
        outputs[port["onnx_name"]] = real.reshape(len(block), *port["shape"][1:])
    return outputs
