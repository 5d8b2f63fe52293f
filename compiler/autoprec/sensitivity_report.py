"""Sensitivity output: the ranked table, ``sensitivity.json`` and ``sensitivity.png``."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from dsqc.autoprec.sensitivity import Sensitivity

JSON_NAME = "sensitivity.json"
PLOT_NAME = "sensitivity.png"
_UNITS = {"sqnr": "SQNR dB (higher = safer)", "cosine": "cosine to FP32", "kl": "KL vs FP32",
          "mse": "MSE vs FP32"}


def format_table(result: Sensitivity, top: int | None = 30) -> str:
    """Most sensitive first: each variant's worst-output value under the chosen metric."""
    metric = result.metric
    rows = result.nodes if top is None else result.nodes[:top]
    width = max([len(n.name) for n in rows] + [4])
    lines = [f"sensitivity ({_UNITS[metric]}; worst output; {result.samples} held-out samples), "
             "most sensitive first:",
             f"  {'rank':>4s}  {'node':{width}s}  {'op':14s} {'w8':>10s} {'a8':>10s} {'w4':>10s}  options"]
    for node in rows:
        cells = [_fmt(node.variants[k].worst(metric), metric) if k in node.variants else "—"
                 for k in ("w8", "a8", "w4")]
        lines.append(f"  {node.rank:4d}  {node.name:{width}s}  {node.op:14s} {cells[0]:>10s} {cells[1]:>10s} "
                     f"{cells[2]:>10s}  {'/'.join(node.options)}")
    if top is not None and len(result.nodes) > top:
        lines.append(f"  … {len(result.nodes) - top} more in {JSON_NAME}")
    return "\n".join(lines)


def _fmt(value: float, metric: str) -> str:
    if metric == "sqnr":
        return f"{value:.2f}"
    if metric == "cosine":
        return f"{value:.6f}"
    return f"{value:.3g}"


def write_json(path: Path, result: Sensitivity, extra: dict[str, Any] | None = None) -> None:
    body = {**(extra or {}), **result.to_dict()}
    path.write_text(json.dumps(_finite(body), indent=2, sort_keys=True) + "\n")


def _finite(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def write_plot(path: Path, result: Sensitivity, top: int = 30) -> None:
    """Horizontal bars per variant for the ``top`` most sensitive nodes (matplotlib, Agg)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = list(reversed(result.nodes[:top]))
    fig, ax = plt.subplots(figsize=(9, 1.2 + 0.28 * max(len(rows), 1)), dpi=100)
    height = 0.27
    for i, (kind, color) in enumerate((("w8", "#4878d0"), ("a8", "#ee854a"), ("w4", "#6acc64"))):
        have = [(y, n.variants[kind].worst(result.metric)) for y, n in enumerate(rows) if kind in n.variants]
        ys = [y + (i - 1) * height for y, _ in have]
        xs = [_plottable(value, result.metric) for _, value in have]
        if ys:
            ax.barh(ys, xs, height=height, color=color, label=kind)
    ax.set_yticks(range(len(rows)))
    ax.set_yticklabels([_short(n.name) for n in rows], fontsize=7)
    ax.set_xlabel(_UNITS[result.metric] + " — one node quantized at a time")
    ax.set_title(f"dsqc sensitivity: {len(result.nodes)} nodes, {result.samples} samples "
                 f"(top {len(rows)}, most sensitive at the top)", fontsize=9)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, metadata={"Software": None})
    plt.close(fig)


def _plottable(value: float, metric: str) -> float:
    if metric == "sqnr":
        return min(value, 120.0)
    return value


def _short(name: str, limit: int = 48) -> str:
    return name if len(name) <= limit else "…" + name[-(limit - 1):]
