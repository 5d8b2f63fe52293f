"""The report's sections. Each takes the per-target reports (``report.json`` bodies; one today, several
with multi-target builds) and returns HTML in which every model-supplied string is escaped."""

from __future__ import annotations

import math
from html import escape
from typing import Any

import numpy as np

from dsqc.backends.registry import ReportView, get_backend
from dsqc.detection import detection_line
from dsqc.driver.html.charts import histogram_svg, precision_bar_svg
from dsqc.errors import DsqcError

PARAM_ROWS = 400  # parameter map rows shown per table; the full plan is in manifest.json


def esc(value: Any) -> str:
    return escape(str(value), quote=True)


def num(value: Any, digits: int = 4) -> str:
    if value is None:
        return "–"
    if isinstance(value, str):
        return esc(value)
    value = float(value)
    return "∞" if math.isinf(value) else f"{value:.{digits}g}"


def badge(text: str, kind: str) -> str:
    return f'<span class="badge {esc(kind)}">{esc(text)}</span>'


def table(head: list[str], rows: list[list[str]]) -> str:
    """``head`` is escaped here; ``rows`` hold HTML the caller escaped."""
    th = "".join(f"<th>{esc(h)}</th>" for h in head)
    body = "".join("<tr>" + "".join(row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{th}</tr></thead><tbody>{body}</tbody></table>"


def td(text: Any, kind: str = "") -> str:
    """A cell: ``text`` escaped, except for ``kind="raw"`` (HTML the caller built and escaped)."""
    if kind == "raw":
        return f"<td>{text}</td>"
    return f'<td class="{kind}">{esc(text)}</td>' if kind else f"<td>{esc(text)}</td>"


def view(report: dict[str, Any]) -> ReportView:
    """The target's own rows (``Backend.report_view``); none for a target not installed here."""
    try:
        return get_backend(str(report.get("target"))).report_view(report)
    except DsqcError:
        return ReportView()


def _gate(target: str, gate: str, level: str, measured: str) -> list[str]:
    kind = {"ok": "pass", "pass": "pass", "degraded": "warn"}.get(level, "fail")
    return [td(target), td(gate), td(badge(level, kind), "raw"), td(measured)]


def gates(reports: list[dict[str, Any]], manifest: dict[str, Any]) -> str:
    """Pass/fail of every gate the build checked, per target, and the verdict."""
    rows: list[list[str]] = []
    for r in reports:
        target, metrics = str(r.get("target")), r.get("metrics") or {}
        verdict = r.get("verdict") or {}
        reasons = "; ".join(verdict.get("reasons") or []) or "every output within the limits"
        rows.append(_gate(target, "verdict", str(verdict.get("level", "?")), reasons))
        floor = float((verdict.get("thresholds") or {}).get("degraded_sqnr_db", 15.0))
        ver = metrics.get("verification") or {}
        for name, m in (ver.get("outputs") or {}).items():
            sqnr = _float(m.get("sqnr_db"))
            level = "pass" if sqnr >= floor else "fail"
            rows.append(_gate(target, f"SQNR of output '{name}' ≥ {floor:g} dB", level,
                              f"{num(sqnr)} dB, cosine {num(m.get('cosine'), 5)}"))
            for g in m.get("groups") or []:
                part, what = _float(g.get("sqnr_db")), f"output '{name}' channels {g.get('channels')}"
                measured = f"{num(part)} dB, cosine {num(g.get('cosine'), 5)}, RMS {num(g.get('rms'))}"
                rows.append(_gate(target, f"SQNR of {what} ≥ {floor:g} dB",
                                  "pass" if part >= floor else "fail", measured))
        given = metrics.get("gates") or {}
        if given.get("min_sqnr") is not None:
            rows.append(_gate(target, f"--min-sqnr {given['min_sqnr']:g}", "pass",
                              f"worst output {num(ver.get('min_sqnr_db'))} dB"))
        if given.get("max_drop") is not None:
            rows.append(_gate(target, f"--max-drop {given['max_drop']:g}", "pass",
                              f"drop {num((ver.get('task') or {}).get('drop'))}"))
        if given.get("strict"):
            rows.append(_gate(target, "--strict (verdict must be ok)", "pass", "verdict ok"))
        mp = metrics.get("mixed_precision") or {}
        if rep := metrics.get("repair"):  # the verdict's own repair, not a budget the user gave
            mp = {}
            names = {"int8": "plain int8", "dynamic": "dynamic build", "mixed": "mixed plan"}
            tried = [f"dynamic build {num(rep['dynamic']['achieved'])}"] if "dynamic" in rep else []
            if "mixed" in rep:
                tried.append(f"mixed plan {num(rep['mixed']['achieved'])} with {rep['nodes_above_int8']} "
                             "nodes above int8")
            rows.append(_gate(target, f"repair to the verdict's ok line {rep['budget']}",
                              "degraded" if rep["kept"] == "int8" else "pass",
                              f"plain int8 {num(rep['int8']['achieved'])}, {', '.join(tried)}: "
                              f"{names[rep['kept']]} kept"))
        for key in ("accuracy", "size") if mp else ():
            part = mp[key]
            budget = part.get("budget", part.get("budget_fraction"))
            achieved = num(part.get("achieved", part.get("fraction")))
            on = f" ({part['metric']})" if part.get("metric") else ""
            rows.append(_gate(target, f"--{key}-budget {budget}{on}", "pass" if part["met"] else "fail",
                              f"achieved {achieved}"))
        if r.get("failed"):
            rows.append(_gate(target, "build", "fail", str(r["failed"])))
    command = " ".join(manifest.get("command") or []) or "(API call)"
    note = ("<p class='muted'>A gate given on the command line that fails stops the build before anything "
            f"is written: a bundle exists only when they passed. Command: <code>{esc(command)}</code></p>")
    return table(["target", "gate", "result", "measured"], rows) + note


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return float("nan")


def accuracy(reports: list[dict[str, Any]]) -> str:
    """Per output, per target: SQNR, cosine, MSE (ORT), and the target runtime's own run where it has one."""
    rows: list[list[str]] = []
    for r in reports:
        metrics = r.get("metrics") or {}
        ver = metrics.get("verification") or {}
        own = view(r)
        for name, m in (ver.get("outputs") or {}).items():
            rows.append([td(r.get("target")), td(name, "name"), td(own.verified_by),
                         td(num(m.get("sqnr_db")), "num"), td(num(m.get("cosine"), 6), "num"),
                         td(num(m.get("mse")), "num")])
            rows += [[td(r.get("target")), td(f"{name} channels {g.get('channels')}", "name"),
                      td(own.verified_by), td(num(g.get("sqnr_db")), "num"),
                      td(num(g.get("cosine"), 6), "num"), td("")] for g in m.get("groups") or []]
        for name, m in own.runtime_outputs.items():
            rows.append([td(r.get("target")), td(name, "name"), td(own.runtime),
                         td(num(m.get("sqnr_db")), "num"), td(num(m.get("cosine"), 6), "num"),
                         td(num(m.get("mse")), "num")])
    if not rows:
        return "<p>Not quantized: nothing to compare (--precision fp32).</p>"
    extra = []
    for r in reports:
        ver = (r.get("metrics") or {}).get("verification") or {}
        if ver.get("top1_agreement") is not None:
            extra.append(f"{esc(r.get('target'))}: top-1 agreement {ver['top1_agreement'] * 100:.2f} %")
        if ver.get("detections"):
            extra.append(f"{esc(r.get('target'))}: {esc(detection_line(ver['detections']))} (ORT)")
        if (own := view(r)).runtime_detections:
            extra.append(f"{esc(r.get('target'))}: {esc(detection_line(own.runtime_detections))} "
                         f"({esc(own.runtime)})")
        if ver.get("task"):
            t = ver["task"]
            extra.append(f"{esc(r.get('target'))}: {esc(t.get('metric'))} FP32 {num(t.get('fp32'))} → "
                         f"{num(t.get('quantized'))} (drop {num(t.get('drop'))})")
        samples = ver.get("samples")
        if samples:
            extra.append(f"{esc(r.get('target'))}: {samples} held-out samples")
    body = table(["target", "output", "run by", "SQNR dB", "cosine", "MSE"], rows)
    checks = target_checks(reports)
    return body + ("<p>" + "<br>".join(extra) + "</p>" if extra else "") + checks


def target_checks(reports: list[dict[str, Any]]) -> str:
    """The backends' own checks of their artifact (``ReportView.checks``: LiteRT vs the integer reference,
    csim, TensorRT rules…)."""
    rows = [_gate(str(r.get("target")), c.check, c.level, c.measured)
            for r in reports for c in view(r).checks]
    return "<h3>Target checks</h3>" + table(["target", "check", "result", "measured"], rows) if rows else ""


def _decisions(report: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Node → {precision, reason}: the plan's, with the lowering's float nodes over it."""
    nodes = dict((report.get("plan") or {}).get("nodes") or {})
    nodes.update((report.get("metrics") or {}).get("float_nodes") or {})
    return nodes


def precision_side_by_side(reports: list[dict[str, Any]]) -> str:
    """Several targets: one row per node, one column per target (precision and why)."""
    per = {str(r.get("target")): _decisions(r) for r in reports}
    names = sorted({n for d in per.values() for n in d})
    rows = []
    for name in names:
        row = [td(name, "name")]
        for decisions in per.values():
            d = decisions.get(name) or {}
            precision = _precision_label(d, "–")
            why = f"<span class='muted'>{esc(d.get('reason', ''))}</span>"
            row.append(td(f"{badge(precision, f'p-{precision}')} {why}", "raw"))
        rows.append(row)
    opened = " open" if len(names) <= 40 else ""
    return f"<details{opened}><summary>{len(names)} nodes</summary>{table(['node', *per], rows)}</details>"


def _precision_label(decision: dict[str, Any], missing: str) -> str:
    """A plan node's precision as the report names it: ``integer``, ``int16`` (an int8 node with int16
    activations) or its precision."""
    if decision.get("integer_only"):
        return "integer"
    return "int16" if decision.get("activations") == "int16" else str(decision.get("precision", missing))


def precision_map(reports: list[dict[str, Any]]) -> str:
    """Node → precision and the planner's reason; float nodes of the lowering added."""
    if len(reports) > 1:
        return precision_side_by_side(reports)
    out: list[str] = []
    for r in reports:
        plan = r.get("plan") or {}
        nodes = plan.get("nodes") or {}
        floats = (r.get("metrics") or {}).get("float_nodes") or {}
        counts: dict[str, int] = {}
        rows = []
        for name in sorted(set(nodes) | set(floats)):
            d = floats.get(name) or nodes.get(name) or {}
            precision = _precision_label(d, "?")
            counts[precision] = counts.get(precision, 0) + 1
            rows.append([td(name, "name"), td(badge(precision, f"p-{precision}"), "raw"),
                         td(d.get("reason", ""))])
        out.append(f"<h3>{esc(r.get('target'))}</h3>")
        if not rows:
            out.append("<p>No plan: the artifact is the FP32 model.</p>")
            continue
        out.append(precision_bar_svg(counts))
        opened = " open" if len(rows) <= 40 else ""
        out.append(f"<details{opened}><summary>{len(rows)} nodes</summary>"
                   + table(["node", "precision", "why"], rows) + "</details>")
    return "".join(out)


def sensitivity(reports: list[dict[str, Any]]) -> str:
    rows = []
    for r in reports:
        mp = (r.get("metrics") or {}).get("mixed_precision") or {}
        for k, row in enumerate((mp.get("sensitivity") or {}).get("top") or [], 1):
            rows.append([td(r.get("target")), td(str(k), "num"), td(row.get("node"), "name"),
                         td(row.get("op")), td(num(row.get("score_db")), "num")])
    if not rows:
        return ("<p>Not computed for this build (it runs with <code>--accuracy-budget</code>, or "
                "<code>dsqc analyze</code>).</p>")
    return (table(["target", "rank", "node", "op", "output SQNR with only this node quantized (dB)"], rows)
            + "<p class='muted'>The full ranking is in <code>sensitivity.json</code>.</p>")


def histograms(reports: list[dict[str, Any]]) -> str:
    out = []
    for r in reports:
        hist = (r.get("metrics") or {}).get("histograms") or {}
        tensors = hist.get("tensors") or []
        if not tensors:
            continue
        out.append(f"<h3>{esc(r.get('target'))}</h3><p class='muted'>Ranked by {esc(hist.get('ranking'))}; "
                   f"{esc(hist.get('samples'))} calibration samples; log-scaled counts, blue inside the "
                   "clipping range (shaded), red outside it (saturated by the quantizer).</p>"
                   "<div class='grid'>")
        for h in tensors:
            out.append(f"<div class='card'><div class='title'>{esc(h['tensor'])}</div>{histogram_svg(h)}"
                       f"<div class='muted'>data [{num(h['min'])}, {num(h['max'])}], {esc(h['dtype'])} scale "
                       f"{num(h['scale'])} zp {esc(h['zero_point'])}; "
                       f"clipped {h['clipped_fraction'] * 100:.3f} %; "
                       f"est. SQNR {num(h['sqnr_db_estimate'])} dB</div></div>")
        out.append("</div>")
    return "".join(out) or "<p>No quantized activations (nothing calibrated).</p>"


def latency_size(reports: list[dict[str, Any]]) -> str:
    rows = []
    for r in reports:
        metrics = r.get("metrics") or {}
        ver = metrics.get("verification") or {}
        target = r.get("target")
        size = ver.get("size_bytes")
        if size:
            rows.append([td(target), td("model size (ONNX bytes)"),
                         td(f"{size['fp32'] / 1e6:.3f} MB → {size['quantized'] / 1e6:.3f} MB "
                            f"({size['quantized'] / max(size['fp32'], 1):.2f}×)")])
        lat = ver.get("latency_ms")
        if lat:
            rows.append([td(target), td("latency, ORT CPU 1 thread"),
                         td(f"FP32 {num(lat['fp32'])} ms → {num(lat['quantized'])} ms "
                            f"({num(lat['ratio'], 3)}×)")])
        rows += [[td(target), td(what), td(value)] for what, value in view(r).measured]
    note = ("<p class='muted'>Timed on the build machine (other jobs share its cores: treat as indicative); "
            "a build with --no-latency shows no timing.</p>")
    return (table(["target", "what", "value"], rows) if rows else "<p>Nothing measured.</p>") + note


def parameter_map(reports: list[dict[str, Any]]) -> str:
    """Tensor → dtype, granularity, scale, zero point (and the fixed-point form where the backend's
    ``ReportView.fixed_point`` asks for it), per target."""
    out = []
    for r in reports:
        tensors = (r.get("plan") or {}).get("tensors") or {}
        if not tensors:
            continue
        fixed = view(r).fixed_point
        rows = []
        for name in sorted(tensors)[:PARAM_ROWS]:
            s = tensors[name]
            scale = np.asarray(s["scale"], np.float64)
            zero = np.asarray(s["zero_point"])
            gran = "per-tensor" if s.get("axis") is None else (
                f"per-channel axis {s['axis']} ({scale.size})" if not s.get("block_size")
                else f"blockwise axis {s['axis']} block {s['block_size']}")
            scale_text = num(scale.item()) if scale.size == 1 else f"{num(scale.min())} … {num(scale.max())}"
            low, high = int(zero.min()), int(zero.max())
            zero_text = str(low) if low == high else f"{low} … {high}"
            row = [td(name, "name"), td(s["dtype"]), td(gran), td(scale_text, "num"), td(zero_text, "num")]
            if fixed:
                row.append(td(fixed_point(scale)))
            rows.append(row)
        head = ["tensor", "dtype", "granularity", "scale", "zero point"]
        head += ["fixed-point form"] if fixed else []
        more = (f"<p class='muted'>{len(tensors) - PARAM_ROWS} more tensors in manifest.json's plan.</p>"
                if len(tensors) > PARAM_ROWS else "")
        opened = " open" if len(tensors) <= 40 else ""
        out.append(f"<h3>{esc(r.get('target'))}</h3><details{opened}><summary>{len(tensors)} quantized "
                   f"tensors</summary>{table(head, rows)}{more}</details>")
    return "".join(out) or "<p>No quantized tensor.</p>"


def fixed_point(scale: np.ndarray) -> str:
    """``2^-n`` when every scale is a power of two, else the Q31 multiplier and shift of the largest."""
    values = np.atleast_1d(scale)
    mantissa, exponent = np.frexp(values)
    if np.all(mantissa == 0.5):
        shifts = sorted({int(1 - e) for e in exponent})
        return "pow2: " + ", ".join(f"2^-{s}" if s >= 0 else f"2^{-s}" for s in shifts[:4]) + \
            (" …" if len(shifts) > 4 else "")
    m, e = np.frexp(float(values.max()))
    multiplier = round(m * (1 << 31))
    largest = " for the largest" if values.size > 1 else ""
    return f"{multiplier}·2^-{31 - e} (Q31 multiplier, shift {31 - e}){largest}"


def cross_target(agreement: dict[str, Any]) -> str:
    """The multi-target agreement: each artifact in its own runtime vs FP32, then every pair in LSBs."""
    rows = [[td(t), td(m.get("runtime")), td(num(m.get("min_sqnr_db")), "num"),
             td(f"{m['top1_agreement'] * 100:.2f} %" if "top1_agreement" in m else "–", "num")]
            for t, m in (agreement.get("vs_fp32") or {}).items()]
    pairs = [[td(f"{p['a']} vs {p['b']}"), td("–" if p.get("max_lsb") is None else str(p["max_lsb"]), "num"),
              td(num(p.get("max_abs_diff")), "num"),
              td(f"{p['top1_agreement'] * 100:.2f} %" if "top1_agreement" in p else "–", "num")]
             for p in agreement.get("pairwise") or []]
    missing = "".join(f"<li>{esc(t)}: not run here — {esc(why)}</li>"
                      for t, why in (agreement.get("not_run") or {}).items())
    return (f"<p>The same {esc(agreement.get('samples'))} held-out samples through every artifact.</p>"
            + table(["target", "runtime", "min SQNR vs FP32 (dB)", "top-1 vs FP32"], rows)
            + table(["pair", "max diff (LSB)", "max |diff|", "top-1 agreement"], pairs)
            + (f"<ul>{missing}</ul>" if missing else ""))
