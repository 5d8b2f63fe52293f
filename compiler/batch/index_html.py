"""The fleet page ``OUT/index.html``: one self-contained file (inline CSS, no script, no network).

A matrix of models × builds (worst output SQNR, or the failure) and a table of every item: status, how it
quantizes (static, dynamic, a mixed plan; chosen by repair or asked for), the reason of a failure,
verdict, SQNR, cosine, top-1 agreement, task metric (a detector's boxes against FP32's when no task metric
was asked), size, time, peak memory and a link to the item's report. Every string from a manifest, a model
or a build log is HTML-escaped.
"""

from __future__ import annotations

import html
import os
import time
from pathlib import Path
from typing import Any
from urllib.parse import quote

CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#222}
h1{font-size:20px;margin:0 0 4px}h2{font-size:16px;margin:24px 0 8px}
.meta{color:#666;margin-bottom:12px}
table{border-collapse:collapse;margin-bottom:8px}
th,td{border:1px solid #ddd;padding:4px 8px;text-align:left;vertical-align:top}
th{background:#f4f4f4}td.num{text-align:right;font-variant-numeric:tabular-nums}
.ok{background:#e6f4ea;color:#137333}.cached{background:#e8f0fe;color:#1a4fa0}
.bad{background:#fce8e6;color:#a50e0e}.warn{background:#fef7e0;color:#8a5a00}
.badge{padding:1px 6px;border-radius:3px;font-weight:600;white-space:nowrap}
.note{max-width:300px;font-size:12px;word-break:break-word}
.reason{min-width:240px;max-width:640px;font-family:ui-monospace,monospace;font-size:12px;word-break:break-word}
"""


def write_index(path: Path, records: list[dict[str, Any]], manifest: str, executor: str,
                seconds: float) -> None:
    """Write the page atomically."""
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(render_index(records, manifest, executor, seconds), encoding="utf-8")
    os.replace(tmp, path)


def render_index(records: list[dict[str, Any]], manifest: str, executor: str, seconds: float) -> str:
    ok = sum(1 for r in records if r["status"] == "ok")
    cached = sum(1 for r in records if r.get("cached"))
    title = f"dsqc batch — {manifest}"
    meta = (f"{ok} of {len(records)} items ok ({cached} reused from an earlier run), "
            f"{len(records) - ok} failed · {executor} · {seconds:.1f} s · "
            f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}")
    parts = [f"<!DOCTYPE html><html lang=en><head><meta charset=utf-8><title>{_e(title)}</title>"
             f"<style>{CSS}</style></head><body>",
             f"<h1>{_e(title)}</h1><div class=meta>{_e(meta)}</div>",
             _failures(records), _matrix(records), "<h2>Items</h2>", _table(records), "</body></html>\n"]
    return "\n".join(parts)


def _e(value: Any) -> str:
    return html.escape("" if value is None else str(value), quote=True)


def _status(record: dict[str, Any]) -> tuple[str, str]:
    """(label, css class)."""
    status = record["status"]
    if status == "ok":
        verdict = (record.get("summary") or {}).get("verdict")
        if record.get("cached"):
            return "ok (reused)", "cached"
        return ("ok", "ok") if verdict in (None, "ok") else (f"ok, {verdict}", "warn")
    labels = {"memory": "OUT OF MEMORY", "timeout": "TIMEOUT", "crashed": "CRASHED"}
    return labels.get(status, "FAILED"), "bad"


def _link(record: dict[str, Any], text: str) -> str:
    summary = record.get("summary") or {}
    if not record.get("bundle") or not summary.get("report"):
        return _e(text)
    href = quote(f"{record['bundle']}/{summary['report']}")
    return f"<a href=\"{_e(href)}\">{_e(text)}</a>"


def _failures(records: list[dict[str, Any]]) -> str:
    """Every failed item with its whole reason, first on the page."""
    failed = [r for r in records if r["status"] != "ok"]
    if not failed:
        return ""
    rows = "".join(f"<tr><td>{_e(r['id'])}</td><td><span class=\"badge bad\">{_e(_status(r)[0])}</span></td>"
                   f"<td class=reason>{_e(r.get('reason'))}</td></tr>" for r in failed)
    return (f"<h2>Failed: {len(failed)}</h2><table><tr><th>item</th><th>status</th><th>reason</th></tr>"
            f"{rows}</table>")


def _matrix(records: list[dict[str, Any]]) -> str:
    models = list(dict.fromkeys(r["model"] for r in records))
    builds = list(dict.fromkeys(r["id"].split("/", 1)[1] for r in records))
    cells = {(r["model"], r["id"].split("/", 1)[1]): r for r in records}
    rows = ["<table><tr><th>model</th>" + "".join(f"<th>{_e(b)}</th>" for b in builds) + "</tr>"]
    for model in models:
        row = [f"<tr><th>{_e(model)}</th>"]
        for build in builds:
            record = cells.get((model, build))
            if record is None:
                row.append("<td></td>")
                continue
            label, css = _status(record)
            sqnr = (record.get("summary") or {}).get("min_sqnr_db")
            text = f"{sqnr:.1f} dB" if record["status"] == "ok" and sqnr is not None else label
            row.append(f"<td class=\"{css}\" title=\"{_e(record.get('reason') or label)}\">"
                       f"{_link(record, text)}</td>")
        rows.append("".join(row) + "</tr>")
    return "<h2>Worst output SQNR (FP32 vs quantized) per build</h2>" + "".join(rows) + "</table>"


HEADERS = ("item", "target", "status", "quantization", "reason (failed) / verdict (not ok)", "min SQNR dB",
           "cosine", "top-1", "task metric", "target check", "size MB", "time s", "peak MB", "report")
NUMERIC = {"min SQNR dB", "cosine", "top-1", "size MB", "time s", "peak MB"}


def _table(records: list[dict[str, Any]]) -> str:
    rows = ["<table><tr>" + "".join(f"<th>{h}</th>" for h in HEADERS) + "</tr>"]
    for r in records:
        s = r.get("summary") or {}
        label, css = _status(r)
        verdict = s.get("verdict")
        reason = r.get("reason") or (f"{verdict}: {'; '.join(s.get('verdict_reasons') or [])}"
                                     if verdict not in (None, "ok") else "")
        task = s.get("task") or {}
        task_text = (f"{task.get('metric', 'task')} {task['quantized']:.4f} (fp32 {task['fp32']:.4f})"
                     if task.get("quantized") is not None and task.get("fp32") is not None else "")
        boxes = s.get("detections") or {}
        if not task_text and boxes.get("fp32_boxes") is not None:  # a detector: its boxes vs FP32's
            task_text = (f"boxes vs FP32 {boxes['matched']}/{boxes['fp32_boxes']} matched, {boxes['boxes']} "
                         f"found (agreement {boxes['agreement']:.3f})")
        size = s.get("size_bytes")
        ratio = f" ({size / s['size_fp32_bytes']:.2f}×)" if size and s.get("size_fp32_bytes") else ""
        cells = [
            _e(r["id"]), _e(r["target"]), f"<span class=\"badge {css}\">{_e(label)}</span>",
            _e(s.get("quantization") or ""), f"<div class=note>{_e(reason)}</div>",
            _num(s.get("min_sqnr_db"), "{:.2f}"), _num(s.get("min_cosine"), "{:.5f}"),
            _num(s.get("top1_agreement"), "{:.1%}"), _e(task_text), _e(s.get("target_check") or ""),
            (_num(size / 1e6, "{:.3f}") + _e(ratio)) if size else "",
            _num(r.get("seconds"), "{:.1f}"), _num(r.get("peak_rss_mb"), "{:.0f}"),
            _link(r, s.get("report", "")) if r.get("bundle") else "",
        ]
        rows.append("<tr>" + "".join(f"<td class=num>{c}</td>" if h in NUMERIC else f"<td>{c}</td>"
                                     for h, c in zip(HEADERS, cells, strict=True)) + "</tr>")
    return "".join(rows) + "</table>"


def _num(value: Any, fmt: str) -> str:
    if value is None:
        return ""
    try:
        return _e(fmt.format(float(value)))
    except (TypeError, ValueError):
        return _e(value)
