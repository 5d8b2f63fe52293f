"""What the ``dsqc`` subcommands share: verbosity flags, the model argument (a file or
``module:factory``), quiet runtimes, the registered target names."""

from __future__ import annotations

import argparse
from pathlib import Path


def quiet(args: argparse.Namespace) -> bool:
    """``-q``: errors only — no summary, no warnings, no runtime chatter."""
    return bool(getattr(args, "verbose", 0) - getattr(args, "quiet", 0) < 0)


def add_verbosity(parser: argparse.ArgumentParser, default: object = 0) -> None:
    parser.add_argument("-v", "--verbose", action="count", default=default, help="more output (-vv: debug)")
    parser.add_argument("-q", "--quiet", action="count", default=default, help="errors only")


def target_names() -> list[str]:
    """The registered target names (the backends themselves are imported only when a command runs)."""
    from dsqc.backends.registry import names

    return names()


def resolve_model(spec: str, scratch: Path) -> Path:
    """A file path, or ``module:factory`` exported through torch into ``scratch``."""
    path = Path(spec)
    if path.exists() or ":" not in spec or spec.endswith(".onnx"):
        return path
    from dsqc.model_io import save_model
    from dsqc.torch_export import from_torch, load_factory

    module, inputs = load_factory(spec)
    target = scratch / f"{spec.partition(':')[2]}.onnx"
    save_model(from_torch(module, inputs), target)
    return target


def quiet_runtimes(args: argparse.Namespace) -> None:
    """ORT's C++ warnings only at ``-vv`` (LiteRT's chatter goes to the debug log: ``tflite.runtime``)."""
    from dsqc.verify import quiet_onnxruntime

    quiet_onnxruntime(show_warnings=getattr(args, "verbose", 0) - getattr(args, "quiet", 0) >= 2)
