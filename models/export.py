"""Export PyTorch modules to ONNX for dsqc (needs the ``torch`` extra).

Uses the TorchScript exporter (``dynamo=False``). In ``TrainingMode.EVAL`` that exporter fuses
Conv+BatchNorm itself (``_jit_pass_onnx_eval_peephole``); dsqc folds BatchNorm on its own, so by
default the module is exported in ``TrainingMode.PRESERVE`` (module already in eval mode), which
keeps ``BatchNormalization`` nodes while constant folding still turns weight transposes and shape
arithmetic into initializers. The dynamo exporter also folds BN (onnxscript optimizer) and only
implements opset >= 18, so it is not used.
"""

from __future__ import annotations

import logging
import os
import tempfile
import warnings
from collections.abc import Sequence
from pathlib import Path

import onnx
import torch
from torch import nn

from dsqc.models.zoo import ZOO

log = logging.getLogger(__name__)

# Warnings the TorchScript exporter emits on every call; they carry no information for us.
_NOISE = (
    "You are using the legacy TorchScript-based ONNX export",
    "The feature will be removed",
    "It is recommended that constant folding be turned off",
)


def export_onnx(
    module: nn.Module,
    example_inputs: torch.Tensor | tuple[torch.Tensor, ...],
    path: str | os.PathLike[str],
    *,
    input_names: Sequence[str],
    output_names: Sequence[str],
    dynamic_batch: bool = True,
    opset: int = 17,
    fold_batchnorm: bool = False,
) -> Path:
    """Export ``module`` (put in eval mode) to ``path``; axis 0 is named ``batch`` if dynamic.

    ``fold_batchnorm=True`` lets the exporter fuse Conv+BN (useful as a reference for dsqc's own
    folding); the default keeps ``BatchNormalization`` nodes in the graph.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    args = example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)
    dynamic_axes = None
    if dynamic_batch:
        dynamic_axes = {name: {0: "batch"} for name in (*input_names, *output_names)}
    mode = torch.onnx.TrainingMode.EVAL if fold_batchnorm else torch.onnx.TrainingMode.PRESERVE
    module.eval()
    with torch.no_grad():
        reference = module(*args)
    with warnings.catch_warnings(), torch.no_grad():
        for msg in _NOISE:
            warnings.filterwarnings("ignore", message=msg)
        torch.onnx.export(
            module,
            args,
            str(path),
            dynamo=False,
            opset_version=opset,
            input_names=list(input_names),
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            training=mode,
            do_constant_folding=True,
        )
    outputs = reference if isinstance(reference, (tuple, list)) else (reference,)
    _pin_output_dims(path, [tuple(o.shape) for o in outputs], skip_batch=dynamic_batch)
    log.info("exported %s to %s (opset %d)", type(module).__name__, path, opset)
    return path


def _pin_output_dims(path: Path, shapes: Sequence[tuple[int, ...]], *, skip_batch: bool) -> None:
    """Replace symbolic output dims the exporter could not infer with the traced sizes.

    The TorchScript exporter loses static sizes behind Shape→Reshape chains (MiniLM's output
    comes out as ``[batch, LayerNormalization…_dim_1, 384]``); static backends want numbers.
    """
    model = onnx.load(str(path))
    changed = False
    for value, shape in zip(model.graph.output, shapes, strict=True):
        dims = value.type.tensor_type.shape.dim
        for axis, (dim, size) in enumerate(zip(dims, shape, strict=True)):
            if (axis == 0 and skip_batch) or dim.HasField("dim_value"):
                continue
            dim.dim_value = size
            changed = True
    if changed:
        onnx.save(model, str(path))


def zoo_model(name: str, cache_dir: str | os.PathLike[str]) -> Path:
    """Return ``cache_dir/<name>.onnx`` for zoo entry ``name``, exporting it on first use.

    The graph has one input ``input`` and one output ``output`` with a dynamic batch axis. The
    file is written atomically, so concurrent callers never see a partial model.
    """
    if name not in ZOO:
        raise KeyError(f"unknown zoo model {name!r}; choose from {sorted(ZOO)}")
    cache_dir = Path(cache_dir)
    target = cache_dir / f"{name}.onnx"
    if target.exists():
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    module, example = ZOO[name]()
    fd, tmp = tempfile.mkstemp(suffix=".onnx", dir=cache_dir)
    os.close(fd)
    try:
        export_onnx(module, example, tmp, input_names=["input"], output_names=["output"])
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target
