"""``dsqc`` command line. Heavy modules are imported inside the commands so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from dsqc import __version__
from dsqc.driver.cli_common import add_verbosity, quiet, quiet_runtimes, resolve_model, target_names
from dsqc.driver.cli_tools import add_tool_parsers
from dsqc.errors import DsqcError
from dsqc.range_methods import METHODS

if TYPE_CHECKING:
    from dsqc.driver.build_types import BuildRequest, BuildResult

log = logging.getLogger("dsqc")


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    args.argv = ["dsqc", *(sys.argv[1:] if argv is None else argv)]
    _configure_logging(args.verbose - args.quiet)
    if not getattr(args, "command", None):
        parser.print_help()
        return 2
    from dsqc.driver.output import Terminated, termination_as_interrupt

    try:
        with termination_as_interrupt():  # SIGTERM cleans up like Ctrl-C
            return int(args.func(args) or 0)
    except DsqcError as exc:
        print(f"dsqc: error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        print(f"dsqc: {'terminated (SIGTERM)' if terminated else 'interrupted'}; nothing was written",
              file=sys.stderr)
        return Terminated.exit_code if terminated else 130
    except BrokenPipeError:  # `dsqc inspect m.onnx | head`: the reader left; not an error of ours
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def _configure_logging(level: int) -> None:
    mapping = {-1: logging.ERROR, 0: logging.WARNING, 1: logging.INFO}
    logging.basicConfig(level=mapping.get(level, logging.DEBUG if level > 1 else logging.ERROR),
                        format="%(levelname)s %(name)s: %(message)s")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="dsqc", description="Offline quantization compiler: "
                                     "ONNX or PyTorch → INT8/INT4 for ONNX Runtime, TensorRT, TFLite, HLS.")
    parser.add_argument("--version", action="version", version=f"dsqc {__version__}")
    add_verbosity(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    _add_build(sub)
    add_tool_parsers(sub)  # analyze, inspect, export, check, debug, verify
    _add_batch(sub)
    return parser


def _add_build(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("build", help="compile a model for a target")
    add_verbosity(p, argparse.SUPPRESS)
    p.add_argument("model", help="model.onnx, or module:factory returning (torch module, inputs)")
    p.add_argument("--target", "-t", required=True,
                   help=f"one of {', '.join(target_names())}, or several comma-separated (one calibration, "
                   "OUT/<target>/ each, params.csv and agreement.json across them)")
    p.add_argument("-o", "--out", required=True, type=Path, help="output folder")
    p.add_argument("--precision", default="int8", help="int8 (default) or fp32")
    p.add_argument("--mode", choices=("static", "dynamic", "auto"),
                   help="activation scales: static (calibrated, default; recipe quantization.mode), dynamic "
                        "(computed at run time; onnx, tflite; --calib optional) or auto (per node, measured)")
    p.add_argument("--calib", help="calibration data: .npz, folder, module:function, mnist, random")
    p.add_argument("--calib-samples", type=int, default=256, help="calibration samples (default 256)")
    p.add_argument("--calib-batch", type=int, default=8, help="calibration batch size (default 8)")
    p.add_argument("--method", choices=METHODS,
                   help="range calibration (default: recipe, else minmax; select: minmax or percentile, "
                        "whichever moves the output less on unseen calibration samples; auto: mse on conv "
                        "inputs)")
    p.add_argument("--recipe", type=Path, help="TOML recipe (overrides, exclusions, precisions)")
    p.add_argument("--eval-data", help="held-out data for verification (default: a split of --calib)")
    p.add_argument("--eval-samples", type=int, default=64, help="held-out samples (default 64)")
    p.add_argument("--fp32-reference", type=Path, metavar="MODEL",
                   help="a QDQ (QAT) input: verify against this FP32 model (default: the QDQ model "
                        "without Q/DQ)")
    p.add_argument("--outputs", metavar="T1,T2",
                   help="build the part of MODEL that computes these tensors (they become its outputs): "
                        "e.g. a detector's head maps, leaving its decode to the host")
    p.add_argument("--min-sqnr", type=float, help="fail when an output's SQNR (dB) is below this")
    p.add_argument("--max-drop", type=float, help="fail when the task metric drops by more than this")
    p.add_argument("--task-metric", help="module:function(outputs, labels) -> float, higher is better; or "
                                         "box-agreement (built in: a YOLOv8 detector's boxes vs FP32's, no "
                                         "labels)")
    p.add_argument("--no-latency", action="store_true", help="skip the FP32 vs quantized timing")
    p.add_argument("--require-engine", action="store_true",
                   help="-B require_engine=true (trt: fail, exit 2, when the TensorRT engine cannot be built "
                        "here)")
    p.add_argument("--fp16", action="store_true", help="-B fp16=true (trt: run the float parts in FP16)")
    p.add_argument("--trt-version", help="-B trt_version=… (trt: calibration cache header version, e.g. "
                                         "100300)")
    p.add_argument("-B", "--backend-option", action="append", default=[], metavar="KEY=VALUE",
                   help="target option, repeatable; each target rejects keys it does not know: hls "
                        "parallelism=8, interface=m_axi|axis, power_of_two_scales=true, activation_bits=16, "
                        "residual_bits=8, clock_mhz=250, part=…, tb_vectors=16, csim=false; tflite "
                        "io=float|int8, input_layout=nchw|nhwc, "
                        "signature=true, verify, latency, write_fp32; trt require_engine, fp16, "
                        "trt_version, workspace_mib; onnx isa=avx2|vnni|arm64 (the CPU that will run it)")
    p.add_argument("--strict", action="store_true",
                   help="fail (exit 2, nothing written) unless the verdict is ok (not degraded, collapsed "
                        "or unquantized; limits in the recipe's [verdict] table)")
    p.add_argument("--accuracy-budget", metavar="KIND:VALUE",
                   help="automatic mixed precision (int4/int8/fp16/fp32 per node) meeting sqnr:DB (worst "
                        "output SQNR floor), cosine:FLOOR, or drop:MAX (task metric; needs labels or "
                        "--task-metric, e.g. box-agreement); writes plan.recipe.toml")
    p.add_argument("--no-repair", action="store_true",
                   help="keep plain int8 when the verdict is degraded or collapsed (default: search a "
                        "mixed-precision plan for the verdict's ok line and keep the better build)")
    p.add_argument("--size-budget", type=float, metavar="FRACTION",
                   help="with --accuracy-budget: weight bytes at most this fraction of FP32 (e.g. 0.2); "
                        "allows int4 weight-only MatMul/Gemm and embedding tables")
    p.add_argument("--sensitivity-samples", type=int, default=16,
                   help="held-out samples per one-node sensitivity run (default 16)")
    p.add_argument("--dump-ir", type=Path, help="write the graph after each pass into this folder")
    p.add_argument("--check-each-pass", action="store_true", help="run onnx.checker after each pass")
    p.set_defaults(func=_cmd_build)


def _cmd_build(args: argparse.Namespace) -> int:
    import tempfile

    from dsqc.driver.build_types import BuildRequest
    from dsqc.driver.pipeline import build

    quiet_runtimes(args)
    with tempfile.TemporaryDirectory(prefix="dsqc-") as scratch:
        request = BuildRequest(
            model=resolve_model(args.model, Path(scratch)), target=args.target, out_dir=args.out,
            precision=args.precision, calib=args.calib, calib_samples=args.calib_samples,
            calib_batch=args.calib_batch, method=args.method, recipe=args.recipe,
            eval_data=args.eval_data, eval_samples=args.eval_samples, min_sqnr=args.min_sqnr,
            max_drop=args.max_drop, task_metric=args.task_metric, measure_latency=not args.no_latency,
            dump_ir=args.dump_ir, check_each_pass=args.check_each_pass,
            backend_options=_backend_options(args), accuracy_budget=args.accuracy_budget,
            size_budget=args.size_budget, sensitivity_samples=args.sensitivity_samples,
            strict=args.strict, model_label=args.model, mode=args.mode, command_line=args.argv,
            fp32_reference=args.fp32_reference, repair=not args.no_repair,
            outputs=tuple(t.strip() for t in (args.outputs or "").split(",") if t.strip()))
        if "," in args.target:
            return _build_targets(args, request)
        result = build(request)
    if not quiet(args):
        _print_build(result, request)
    if result.failed:
        print(f"dsqc: error: {result.failed}", file=sys.stderr)
        return 2
    return 0


def _build_targets(args: argparse.Namespace, request: BuildRequest) -> int:
    """``--target a,b``: each target's summary, then the agreement table and the shared files."""
    import dataclasses

    from dsqc.driver.multi_target import PARAMS_NAME, build_targets, parse_targets

    multi = build_targets(request, parse_targets(args.target))
    if not quiet(args):
        for target, result in multi.results.items():
            print(f"== {target} ({result.out_dir})")
            _print_build(result, dataclasses.replace(request, target=target, out_dir=result.out_dir))
        if multi.agreement is not None:
            print("\n".join(multi.agreement.lines()))
        print(f"dsqc: {len(multi.results)} targets in {multi.seconds:.1f} s (shared: normalize, data"
              f"{', calibration' if 'calibration' in multi.reused else ''}); parameter map "
              f"{args.out / PARAMS_NAME}")
    if multi.failed:
        print(f"dsqc: error: {multi.failed}", file=sys.stderr)
        return 2
    return 0


def _print_build(result: BuildResult, request: BuildRequest) -> None:
    """Warnings, the summary, and — when the verdict is not ok — a loud last line saying what to try."""
    from dsqc.driver.report import format_result
    from dsqc.driver.stages import advice_hint

    for warning in result.warnings:
        print(f"warning: {warning}", file=sys.stderr)
    print(format_result(result), flush=True)
    if result.verdict is not None and not result.verdict.ok:
        print(f"dsqc: warning: {advice_hint(result.verdict, request)}; --strict makes this exit 2",
              file=sys.stderr)


def _backend_options(args: argparse.Namespace) -> dict[str, object]:
    """``-B key=value`` as strings plus the flags that are shorthands for ``-B`` keys; the target's
    parser types and checks them all."""
    options: dict[str, object] = {}
    for item in args.backend_option:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise DsqcError(f"--backend-option {item!r}: expected KEY=VALUE, e.g. parallelism=8")
        options[key.strip()] = raw.strip()
    shorthands = {"require_engine": args.require_engine or None, "fp16": args.fp16 or None,
                  "trt_version": args.trt_version}  # -B keys; a target without them rejects them by name
    options.update({key: value for key, value in shorthands.items() if value is not None})
    return options


def _add_batch(sub: argparse._SubParsersAction) -> None:
    from dsqc.batch.command import add_batch_parser

    add_batch_parser(sub, add_verbosity)


if __name__ == "__main__":
    sys.exit(main())
