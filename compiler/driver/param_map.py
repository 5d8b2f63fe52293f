"""The cross-target parameter map: for every quantized tensor, each target's scale, zero point, dtype
and granularity side by side (one row per tensor and target, sorted by tensor), the power-of-two
exponent where the scale is one and, for targets that requantize with integers
(``Backend.requantization``: hls), the multiplier + right shift that requantizes into the tensor.
Values are exact: float32 scales printed with 9 significant digits.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any

import numpy as np

from dsqc.backends.registry import get_backend
from dsqc.driver.build_types import BuildResult
from dsqc.quant.spec import QuantSpec

COLUMNS = ("tensor", "target", "dtype", "granularity", "channels", "scale", "zero_point", "pow2_exponent",
           "multiplier", "shift")


def param_rows(results: dict[str, BuildResult]) -> list[dict[str, Any]]:
    """Rows for every tensor any target quantized, targets in the order built."""
    rows = []
    for target, result in results.items():
        if result.plan is None:
            continue
        requant = get_backend(target).requantization(result)
        for name, spec in result.plan.tensors.items():
            row = {"tensor": name, "target": target, **describe(spec)}
            if name in requant:
                row["multiplier"] = " ".join(map(str, requant[name]["multiplier"]))
                row["shift"] = " ".join(map(str, requant[name]["shift"]))
            rows.append(row)
    order = {t: i for i, t in enumerate(results)}
    return sorted(rows, key=lambda r: (r["tensor"], order[r["target"]]))


def describe(spec: QuantSpec) -> dict[str, Any]:
    """A spec as strings: granularity, channel count, scales, zero points, power-of-two exponents."""
    scale = np.ravel(spec.scale)
    if spec.block_size is not None:
        granularity = f"block (axis {spec.axis}, size {spec.block_size})"
    elif spec.axis is not None:
        granularity = f"per-channel (axis {spec.axis})"
    else:
        granularity = "per-tensor"
    exponents = [math.log2(float(s)) for s in scale]
    pow2 = " ".join(str(int(e)) for e in exponents) if all(e == int(e) for e in exponents) else ""
    return {"dtype": spec.dtype, "granularity": granularity, "channels": int(scale.size),
            "scale": " ".join(f"{float(s):.9g}" for s in scale),
            "zero_point": " ".join(str(int(z)) for z in np.ravel(spec.zero_point)),
            "pow2_exponent": pow2, "multiplier": "", "shift": ""}


def write_params_csv(path: Path, rows: list[dict[str, Any]]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)
