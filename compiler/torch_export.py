"""PyTorch entry: export through ``torch.onnx`` and continue as for a file. torch is imported here only."""

from __future__ import annotations

import importlib
import logging
import os
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import onnx

from dsqc.errors import DsqcError, ModelError
from dsqc.model_io import load_model

log = logging.getLogger(__name__)
EXPORT_OPSET = 17


DynamicAxes = Mapping[str, Sequence[int]] | Sequence[int] | None


def from_torch(module: Any, example_inputs: Any, path: str | Path | None = None,
               input_names: list[str] | None = None,
               output_names: list[str] | None = None, opset: int = EXPORT_OPSET,
               dynamic: DynamicAxes = (0,)) -> onnx.ModelProto:
    """Export ``module`` with ``example_inputs`` (tensor or tuple) to ONNX and load it like a file.

    ``dynamic``: axes left symbolic — the same axes for every input and output (default: the batch
    axis 0), per tensor name, or None for a fully static export (the batch fixed to the example's).
    """
    try:
        import torch
    except ImportError as exc:
        raise DsqcError("the PyTorch entry needs torch: pip install 'dsqc[torch]'") from exc
    inputs = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    names = input_names or [f"input_{i}" if len(inputs) > 1 else "input" for i in range(len(inputs))]
    outs = output_names or ["output"]
    with tempfile.TemporaryDirectory(prefix="dsqc-export-") as tmp:
        target = Path(path) if path else Path(tmp) / "model.onnx"
        module.eval()
        axes = _dynamic_axes(dynamic, [*names, *outs])
        try:
            torch.onnx.export(module, inputs, str(target), input_names=names, output_names=outs,
                              opset_version=opset, dynamic_axes=axes, dynamo=False,
                              do_constant_folding=False)
        except Exception as exc:  # torch raises many types from tracing
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"torch.onnx.export failed for {type(module).__name__}: {first}") from exc
        return load_model(target)


def _dynamic_axes(dynamic: DynamicAxes, names: list[str]) -> dict[str, dict[int, str]] | None:
    """torch's ``dynamic_axes``: axis 0 is named ``batch``, axis k ``dim_k`` (shared by every tensor)."""
    if dynamic is None:
        return None
    per_name = dynamic if isinstance(dynamic, Mapping) else dict.fromkeys(names, dynamic)
    unknown = sorted(set(per_name) - set(names))
    if unknown:
        raise DsqcError(f"--dynamic-axes: '{unknown[0]}' is not an input or output name "
                        f"(names: {', '.join(names)})")
    return {n: {a: "batch" if a == 0 else f"dim_{a}" for a in axes} for n, axes in per_name.items() if axes}


def parse_dynamic_axes(spec: str) -> DynamicAxes:
    """``--dynamic-axes``: ``0,1`` (these axes of every input and output) or ``input:0,1;output:0``."""
    def axes(text: str) -> list[int]:
        try:
            return [int(a) for a in text.split(",") if a.strip()]
        except ValueError:
            raise DsqcError(f"--dynamic-axes {spec!r}: expected axis numbers like 0,1 or "
                            "name:0,1;other:0") from None
    if ":" not in spec:
        return axes(spec)
    per_name: dict[str, list[int]] = {}
    for item in filter(None, (part.strip() for part in spec.split(";"))):
        name, _, listed = item.rpartition(":")
        if not name:
            raise DsqcError(f"--dynamic-axes {spec!r}: '{item}' needs NAME:AXES")
        per_name[name] = axes(listed)
    return per_name


def load_factory(spec: str) -> tuple[Any, Any]:
    """Resolve ``package.module:factory``; the factory returns ``(module, example_inputs)``.

    The current directory is importable, as under ``python -m`` (a console script's ``sys.path``
    starts at the script's own folder instead).
    """
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DsqcError(f"'{spec}': expected module:factory (a function returning (model, inputs))")
    if os.getcwd() not in sys.path and "" not in sys.path:
        sys.path.insert(0, os.getcwd())
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise DsqcError(f"cannot import '{spec}': {exc}") from exc
    produced = factory()
    if not (isinstance(produced, tuple) and len(produced) == 2):
        raise DsqcError(f"'{spec}' must return (torch module, example inputs)")
    return produced
