"""``dsqc debug`` output: the ranked terminal tables and ``debug.json`` (every point, graph order)."""

from __future__ import annotations

import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any

from dsqc.debug.command import DebugResult, PointResult
from dsqc.debug.points import JOINT
from dsqc.errors import OutputError

JSON_NAME = "debug.json"
_KINDS = {"activations": ("activation",), "weights and biases": (JOINT, "weight", "bias")}


def format_debug(result: DebugResult, top: int = 15) -> str:
    """Header (what ran, on which data, the outputs), then activations and weights, worst first."""
    d = result.data
    lines = [f"dsqc debug: {result.folder.path} (target {result.folder.target}) against {result.model}",
             f"  runs {result.folder.describe()}",
             f"  held-out data: {d['held_out']}; local error on the first {d['local_samples']}",
             "outputs, fully quantized vs FP32 (SQNR dB):"]
    if d.get("padding_mask"):
        mask = d["padding_mask"]
        lines.append(f"  {', '.join(mask['outputs'])}: over real tokens only ({mask['input']} = 1), as the "
                     "build verified")
    for name, o in result.outputs.items():
        built = o.get("build_verification_sqnr_db")
        built_text = f"; the build verified {_db(built)}" if built is not None else ""
        replay = o.get("replay_vs_qdq_sqnr_db")
        replay_text = f" (the replay matches the QDQ file to {_db(replay)} dB)" if replay is not None else ""
        lines.append(f"  {name}: {_db(o['accumulated_sqnr_db'])} as the build runs it{built_text}; "
                     f"{_db(o['reference_qdq_sqnr_db'])} replayed with reference Q/DQ{replay_text}")
    for title, kinds in _KINDS.items():
        rows = result.ranked(kinds)
        if rows:
            lines += ["", *_table(title, rows, top)]
    lines.append("")
    lines.append("local = only this point quantized, everything else float (worst output or channel scale "
                 "group / the tensor itself); accumulated = the tensor in the fully quantized model")
    lines += [f"note: {n}" for n in result.notes[:5]]
    return "\n".join(lines)


def _table(title: str, rows: list[PointResult], top: int) -> list[str]:
    """Ranked rows, worst first; a joint weight+bias row is followed by its parts (each alone, indented,
    no rank of their own)."""
    ranked = [r for r in rows if r.point.part_of is None]
    parts: dict[str, list[PointResult]] = {}
    for r in rows:
        if r.point.part_of is not None:
            parts.setdefault(r.point.part_of, []).append(r)
    shown = [row for r in ranked[:top] for row in (r, *parts.get(r.point.tensor, []))]
    node_head = "producer (op)" if shown[0].point.kind == "activation" else "consumer (op)"
    names = [f"  ↳ {r.point.kind} alone" if r.point.part_of else r.point.tensor for r in shown]
    tw = min(max([len(n) for n in names] + [len("tensor")]), 40)
    nw = min(max([len(r.point.node_label) for r in shown] + [len(node_head)]), 44)
    joints = sum(1 for r in ranked if r.point.kind == JOINT)
    layers = f" ({joints} layer{'s' if joints > 1 else ''}: weight + bias together, each alone below it)" \
        if joints else ""
    lines = [f"{title}: {len(rows) - joints} quantized{layers}, worst local error first",
             f"  {'rank':>4s}  {'tensor':{tw}s}  {node_head:{nw}s}  {'dtype':5s} {'local out':>9s} "
             f"{'local tensor':>12s} {'accumulated':>11s}"]
    for r, name in zip(shown, names, strict=True):
        tensor, node = _cut(name, tw), _cut(r.point.node_label, nw)
        rank = "" if r.point.part_of else str(r.rank)
        lines.append(f"  {rank:>4s}  {tensor:{tw}s}  {node:{nw}s}  {r.point.spec.dtype:5s} "
                     f"{_db(r.local_worst):>9s} {_db(r.local_tensor):>12s} "
                     f"{_db(r.accumulated):>11s}")
    if len(ranked) > top:
        lines.append(f"  … {len(ranked) - top} more in {JSON_NAME}")
    return lines


def _db(value: float | None) -> str:
    if value is None:
        return "—"
    return "inf" if math.isinf(value) else f"{value:.2f}"


def _cut(text: str, width: int) -> str:
    return text if len(text) <= width else "…" + text[-(width - 1):]


def write_json(result: DebugResult, path: Path) -> None:
    """Written to a temporary file beside ``path`` and renamed: never half-written."""
    body = json.dumps(_jsonable(result.to_dict()), indent=2) + "\n"
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    except OSError as exc:
        raise OutputError(f"{path}: cannot write ({exc.strerror or exc}); choose another --json path") \
            from None
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(body)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value
