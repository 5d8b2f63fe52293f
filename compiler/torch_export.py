"""PyTorch entry: export through ``torch.onnx`` and continue as for a file. torch is imported here only."""

from __future__ import annotations

import importlib
import logging
import tempfile
from pathlib import Path
from typing import Any

import onnx

from .errors import DsqcError, ModelError
from .model_io import load_model

log = logging.getLogger(__name__)
EXPORT_OPSET = 17


def from_torch(module: Any, example_inputs: Any, path: str | Path | None = None,
               input_names: list[str] | None = None,
               output_names: list[str] | None = None) -> onnx.ModelProto:
    """Export ``module`` with ``example_inputs`` (tensor or tuple) to ONNX and load it like a file."""
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
        axes = {n: {0: "batch"} for n in [*names, *outs]}
        try:
            torch.onnx.export(module, inputs, str(target), input_names=names, output_names=outs,
                              opset_version=EXPORT_OPSET, dynamic_axes=axes, dynamo=False,
                              do_constant_folding=False)
        except Exception as exc:  # torch raises many types from tracing
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise ModelError(f"torch.onnx.export failed for {type(module).__name__}: {first}") from exc
        return load_model(target)


def load_factory(spec: str) -> tuple[Any, Any]:
    """Resolve ``package.module:factory``; the factory returns ``(module, example_inputs)``."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise DsqcError(f"'{spec}': expected module:factory (a function returning (model, inputs))")
    try:
        factory = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise DsqcError(f"cannot import '{spec}': {exc}") from exc
    produced = factory()
    if not (isinstance(produced, tuple) and len(produced) == 2):
        raise DsqcError(f"'{spec}' must return (torch module, example inputs)")
    return produced
