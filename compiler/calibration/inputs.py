"""The model's graph inputs as calibration sees them: name, dtype and dims of each."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx

from dsqc.errors import CalibrationError


@dataclass(frozen=True)
class InputSpec:
    """One graph input: name, numpy dtype, dims (int static, str named dynamic, None unknown)."""

    name: str
    dtype: np.dtype
    shape: tuple[int | str | None, ...]


def model_inputs(proto: onnx.ModelProto) -> list[InputSpec]:
    """The graph inputs that are not initializers, in graph order."""
    inits = {t.name for t in proto.graph.initializer}
    specs = []
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        if not vi.type.HasField("tensor_type"):
            raise CalibrationError(f"input {vi.name!r} is not a tensor; dsqc feeds tensors only")
        tt = vi.type.tensor_type
        dims: list[int | str | None] = []
        for d in tt.shape.dim:
            dims.append(d.dim_value if d.HasField("dim_value") else d.dim_param or None)
        dtype = np.dtype(onnx.helper.tensor_dtype_to_np_dtype(tt.elem_type))
        specs.append(InputSpec(vi.name, dtype, tuple(dims)))
    return specs


def fixed_batch(inputs: list[InputSpec]) -> int | None:
    """The batch size the model pins on axis 0 of its inputs (``torch.onnx.export`` without
    ``dynamic_axes`` pins it to the example's batch), or None when axis 0 is symbolic or unknown."""
    for spec in inputs:
        if spec.shape and isinstance(spec.shape[0], int) and spec.shape[0] > 0:
            return spec.shape[0]
    return None
