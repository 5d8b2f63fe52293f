"""The ``dsqc`` subcommands besides ``build`` and ``batch``: inspect, export, check, analyze, debug,
verify. Heavy modules are imported inside the commands so ``--help`` stays fast."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from dsqc.driver.cli_common import add_verbosity, quiet_runtimes, resolve_model, target_names
from dsqc.errors import DsqcError
from dsqc.range_methods import METHODS


def add_tool_parsers(sub: argparse._SubParsersAction) -> None:
    """Register the subcommands of this module, in the order ``dsqc --help`` lists them."""
    _add_analyze(sub)
    _add_inspect(sub)
    _add_export(sub)
    _add_check(sub)
    _add_debug(sub)
    _add_verify(sub)


def _add_inspect(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect", help="ops, parameters, opset, inputs/outputs of a model")
    add_verbosity(p, argparse.SUPPRESS)
    p.add_argument("model", type=Path)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=_cmd_inspect)


def _add_export(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a PyTorch module to ONNX (module:factory)")
    add_verbosity(p, argparse.SUPPRESS)
    p.add_argument("factory", help="package.module:function returning (torch module, example inputs); "
                   "modules in the current directory import as with python -m")
    p.add_argument("-o", "--out", required=True, type=Path, help="ONNX file to write")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset to export (default 17)")
    axes = p.add_mutually_exclusive_group()
    axes.add_argument("--static", action="store_true",
                      help="no dynamic axes: the batch size is fixed to the example inputs'")
    axes.add_argument("--dynamic-axes", metavar="AXES", default="0",
                      help="symbolic axes: '0,1' for every input and output, or 'input:0,1;output:0' "
                           "per name (default '0': the batch)")
    p.set_defaults(func=_cmd_export)


def _add_check(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("check", help="check any QDQ model against a target's quantization rules")
    add_verbosity(p, argparse.SUPPRESS)
    p.add_argument("model", type=Path)
    p.add_argument("--target", "-t", required=True, metavar="TARGET",
                   help="a target whose backend checks any QDQ model against its rules")
    p.set_defaults(func=_cmd_check)


def _cmd_check(args: argparse.Namespace) -> int:
    """Exit 0 when clean (warnings allowed), 1 when a rule is broken, 2 when the model is unusable."""
    from dsqc.backends.registry import checkers, get_backend
    from dsqc.model_io import load_model

    backend = get_backend(args.target)
    if not backend.has_checker:
        raise DsqcError(f"check --target {args.target}: that target has no rules checker; targets with one: "
                        f"{', '.join(checkers())}")
    result = backend.check_model(load_model(args.model))
    print(result.text)
    return 1 if result.failed else 0


def _add_analyze(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("analyze", help="per-node quantization sensitivity (ranked table, JSON, plot)")
    add_verbosity(p, argparse.SUPPRESS)
    p.add_argument("model", help="model.onnx, or module:factory returning (torch module, inputs)")
    p.add_argument("--calib", required=True, help="calibration data: .npz, folder, module:function, mnist")
    p.add_argument("-o", "--out", required=True, type=Path,
                   help="output folder (sensitivity.json, sensitivity.png)")
    p.add_argument("--target", "-t", default="onnx",
                   help=f"one of {', '.join(target_names())} (default onnx)")
    p.add_argument("--metric", default="sqnr", choices=("sqnr", "cosine", "kl", "mse"),
                   help="error measure the ranking uses (default sqnr)")
    p.add_argument("--nodes", metavar="REGEX", help="analyse only nodes whose name matches (re.search)")
    p.add_argument("--samples", type=int, default=8, help="held-out samples each variant runs on (default 8)")
    p.add_argument("--calib-samples", type=int, default=256, help="calibration samples (default 256)")
    p.add_argument("--calib-batch", type=int, default=8, help="calibration batch size (default 8)")
    p.add_argument("--eval-data", help="held-out data (default: a split of --calib)")
    p.add_argument("--method", choices=METHODS,
                   help="range calibration (default: recipe, else minmax; auto: mse on conv inputs)")
    p.add_argument("--recipe", type=Path, help="TOML recipe; nodes it fixes are left out of the analysis")
    p.add_argument("--top", type=int, default=30, help="rows of the printed table (default 30)")
    p.add_argument("--no-plot", action="store_true", help="skip sensitivity.png")
    p.set_defaults(func=_cmd_analyze)


def _cmd_analyze(args: argparse.Namespace) -> int:
    import tempfile

    from dsqc.autoprec.analyze import AnalyzeRequest, analyze
    from dsqc.autoprec.sensitivity_report import format_table

    if args.samples < 1:
        raise DsqcError(f"--samples {args.samples}: give at least 1")
    quiet_runtimes(args)
    with tempfile.TemporaryDirectory(prefix="dsqc-") as scratch:
        result = analyze(AnalyzeRequest(
            model=resolve_model(args.model, Path(scratch)), out_dir=args.out, calib=args.calib,
            target=args.target, metric=args.metric, nodes=args.nodes, samples=args.samples,
            calib_samples=args.calib_samples, calib_batch=args.calib_batch, eval_data=args.eval_data,
            method=args.method, recipe=args.recipe, plot=not args.no_plot))
    print(format_table(result.sensitivity, args.top))
    t = result.timings
    spent = t["calibrate+plan"] + t["analyze"]
    print(f"dsqc: analysed {len(result.sensitivity.nodes)} nodes in {spent:.2f} s "
          f"(calibration {t['calibration']:.2f} s, {result.ratio:.2f}× it); wrote "
          f"{', '.join(str(args.out / a) for a in result.artifacts)}")
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from dsqc.driver.summary import format_summary, summarize
    from dsqc.model_io import load_model

    summary = summarize(load_model(args.model))
    print(json.dumps(summary.to_dict(), indent=2) if args.json else format_summary(summary, str(args.model)))
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    from dsqc.driver.output import staged_output
    from dsqc.model_io import save_model
    from dsqc.torch_export import from_torch, load_factory, parse_dynamic_axes

    if not 7 <= args.opset <= 23:
        raise DsqcError(f"--opset {args.opset}: torch.onnx exports opsets 7..23; 17 is the default")
    dynamic = None if args.static else parse_dynamic_axes(args.dynamic_axes)
    module, inputs = load_factory(args.factory)
    proto = from_torch(module, inputs, opset=args.opset, dynamic=dynamic)
    with staged_output(args.out.parent) as staging:
        save_model(proto, staging / args.out.name)
    print(f"dsqc: exported {args.factory} to {args.out}")
    return 0


def _add_debug(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("debug", help="per quantized tensor: local and accumulated error of a finished build")
    add_verbosity(p, argparse.SUPPRESS)
    p.add_argument("model", help="the FP32 model the build compiled (model.onnx or module:factory)")
    p.add_argument("build", type=Path, help="the -o folder of a finished int8 'dsqc build'")
    p.add_argument("--calib", help="data as for the build (default: what report.json records, if loadable)")
    p.add_argument("--eval-data", help="held-out data (default: as the build)")
    p.add_argument("--eval-samples", type=int, help="held-out samples (default: as many as the build used)")
    p.add_argument("--local-samples", type=int, default=32,
                   help="held-out samples each one-point run uses (default 32)")
    p.add_argument("--top", type=int, default=15, help="rows per printed table (default 15)")
    p.add_argument("--json", type=Path, help="where to write the JSON (default BUILD/debug.json)")
    p.set_defaults(func=_cmd_debug)


def _cmd_debug(args: argparse.Namespace) -> int:
    import tempfile

    from dsqc.debug.command import DebugRequest, debug
    from dsqc.debug.report import JSON_NAME, format_debug, write_json

    if args.top < 1:
        raise DsqcError(f"--top {args.top}: give at least 1")
    with tempfile.TemporaryDirectory(prefix="dsqc-") as scratch:
        result = debug(DebugRequest(model=resolve_model(args.model, Path(scratch)), build_dir=args.build,
                                    calib=args.calib, eval_data=args.eval_data,
                                    eval_samples=args.eval_samples,
                                    local_samples=args.local_samples))
    target = args.json or args.build / JSON_NAME
    write_json(result, target)
    print(format_debug(result, args.top))
    print(f"dsqc: {result.tensors} quantized tensors in {result.timings['total']:.2f} s; wrote {target}")
    return 0


def _add_verify(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="re-hash a bundle's files and re-run its artifact (exit 1 on a "
                       "mismatch, 2 when the folder is not a bundle)")
    add_verbosity(p, argparse.SUPPRESS)
    p.add_argument("bundle", type=Path, help="the -o folder of a finished 'dsqc build'")
    p.set_defaults(func=_cmd_verify)


def _cmd_verify(args: argparse.Namespace) -> int:
    """Exit 0 when every file and the re-run agree, 1 on any mismatch, 2 when the folder is no bundle."""
    from dsqc.driver.verify_bundle import format_check, verify_folder

    checks = verify_folder(args.bundle)  # a multi-target folder: each target's bundle
    print("\n".join(format_check(check) for check in checks))
    return 0 if all(check.ok for check in checks) else 1
