"""``render_report``: the bundle's ``report.html`` from its report(s) and manifest.

Self-contained: inline CSS, inline SVG, no script, no external resource; a restrictive CSP meta tag says
so to the browser. Every string that comes from the model, the data or the command line is escaped.
"""

from __future__ import annotations

from typing import Any

from dsqc.driver.html import sections as s
from dsqc.driver.html.howto import howto_html
from dsqc.driver.html.style import CSS

_CSP = "default-src 'none'; style-src 'unsafe-inline'; img-src data:"
_SECTIONS = (("summary", "Summary"), ("accuracy", "Accuracy"), ("precision", "Precision map"),
             ("sensitivity", "Sensitivity"), ("histograms", "Activation histograms"),
             ("latency", "Latency and size"), ("params", "Parameter map"), ("run", "How to run it"),
             ("files", "Files"))


def render_report(reports: list[dict[str, Any]], manifest: dict[str, Any],
                  agreement: dict[str, Any] | None = None) -> str:
    """The page for one bundle; ``reports`` holds one ``report.json`` body per target, ``agreement`` the
    cross-target comparison of a multi-target build."""
    model = (manifest.get("model") or {}).get("path", "model")
    targets = ", ".join(str(r.get("target")) for r in reports)
    versions = manifest.get("versions") or {}
    nav = "".join(f'<a href="#{key}">{title}</a>' for key, title in _SECTIONS)
    body = {
        "summary": _summary(reports, manifest),
        "accuracy": s.accuracy(reports),
        "precision": s.precision_map(reports),
        "sensitivity": s.sensitivity(reports),
        "histograms": s.histograms(reports),
        "latency": s.latency_size(reports),
        "params": s.parameter_map(reports),
        "run": "".join(f"<h3>{s.esc(r.get('target'))}</h3>{howto_html(r)}" for r in reports),
        "files": _files(manifest),
    }
    sections = list(_SECTIONS)
    if agreement:
        body["agreement"] = s.cross_target(agreement)
        sections.insert(2, ("agreement", "Cross-target agreement"))
        nav = "".join(f'<a href="#{key}">{title}</a>' for key, title in sections)
    parts = [f'<section id="{key}"><h2>{title}</h2>{body[key]}</section>' for key, title in sections]
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{_CSP}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>dsqc report: {s.esc(model)} ({s.esc(targets)})</title><style>{CSS}</style></head><body>"
        f"<header><h1>{s.esc(model)}</h1><div class=\"sub\">dsqc {s.esc(versions.get('dsqc'))} · target "
        f"{s.esc(targets)} · {s.esc(reports[0].get('precision') if reports else '')} · model sha256 "
        f"<code>{s.esc((manifest.get('model') or {}).get('sha256', '')[:16])}…</code></div></header>"
        f"<nav>{nav}</nav><main>{''.join(parts)}</main></body></html>\n")


def _summary(reports: list[dict[str, Any]], manifest: dict[str, Any]) -> str:
    out = []
    for r in reports:
        verdict = r.get("verdict") or {}
        level = str(verdict.get("level", "?"))
        kind = {"ok": "pass", "degraded": "warn"}.get(level, "fail")
        reasons = "; ".join(verdict.get("reasons") or [])
        out.append(f"<div class='verdict'>{s.esc(r.get('target'))}: verdict {s.badge(level, kind)} "
                   f"{s.esc(reasons)}</div>")
    out.append(s.gates(reports, manifest))
    calib = manifest.get("calibration") or {}
    if calib.get("source"):
        out.append(f"<p>Calibrated on <code>{s.esc(calib['source'])}</code> ({s.esc(calib.get('samples'))} "
                   f"samples, {s.esc(calib.get('method'))}; sha256 of the samples "
                   f"<code>{s.esc(str(calib.get('samples_sha256', ''))[:16])}…</code>).</p>")
    versions = manifest.get("versions") or {}
    out.append("<p class='muted'>" + ", ".join(f"{s.esc(k)} {s.esc(v)}" for k, v in sorted(versions.items())
                                               if v) + "</p>")
    warnings = [w for r in reports for w in r.get("warnings") or []]
    if warnings:
        items = "".join(f"<li>{s.esc(w)}</li>" for w in warnings)
        out.append(f"<h3>Warnings</h3><ul class='warnings'>{items}</ul>")
    return "".join(out)


def _files(manifest: dict[str, Any]) -> str:
    rows = [[s.td(name, "name"), s.td(f"{entry.get('bytes', 0):,}", "num"),
             s.td(entry.get("sha256", ""), "name")]
            for name, entry in sorted((manifest.get("files") or {}).items()) if name != "report.html"]
    return (s.table(["file", "bytes", "sha256"], rows)
            + "<p class='muted'>Check them with <code>dsqc verify THIS_FOLDER</code> (hashes, and the "
              "artifact re-run on <code>check/</code> inputs where its runtime is installed).</p>")
