"""``report.json``: the machine-readable record of a build."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from dsqc import __version__
from dsqc.backends.registry import get_backend
from dsqc.detection import detection_line
from dsqc.driver.build_types import BuildResult
from dsqc.driver.manifest import stable_metrics
from dsqc.quant.spec import Precision

SLOWER = 1.05  # INT8/FP32 time above which a build warns: below it, timing noise on a shared machine


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_jsonable(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, float) and not np.isfinite(value):
        return str(value)
    return value


def write_report(path: Path, result: BuildResult, extra: dict[str, Any] | None = None) -> None:
    """Deterministic JSON (sorted keys) so equal inputs give equal reports; wall-clock timings go to the
    bundle's build_info.json instead."""
    body = {"dsqc_version": __version__, **result.to_dict(), **(extra or {})}
    body["metrics"] = stable_metrics(body.get("metrics") or {})
    if result.plan is not None:
        body["plan"] = result.plan.to_dict()
    path.write_text(json.dumps(_jsonable(body), indent=2, sort_keys=True) + "\n")


def format_result(result: BuildResult) -> str:
    """The human summary the CLI prints: artifacts, the plan, the verification table."""
    kinds = Counter(spec.dtype for spec in result.plan.tensors.values()) if result.plan else Counter()
    precision = f"{result.precision}, {kinds['int16']} tensors int16" if kinds["int16"] else result.precision
    lines = [f"dsqc: built target '{result.target}' ({precision}) in {result.out_dir}"]
    vectors = [a for a in result.artifacts if Path(a).parts[0] == "check"]
    lines += [f"  {artifact}" for artifact in result.artifacts if artifact not in vectors]
    if vectors:
        lines.append(f"  check/ ({len(vectors)} files: held-out inputs and outputs for 'dsqc verify')")
    if result.plan is not None:
        hist = ", ".join(f"{k} {v}" for k, v in result.plan.histogram().items())
        order = ("int4", "uint4", "int8", "uint8", "int16", "int32")
        mix = (f" ({', '.join(f'{k} {kinds[k]}' for k in order if k in kinds)})" if "int16" in kinds
               else "")
        lines.append(f"plan: {hist} nodes; {len(result.plan.tensors)} quantized tensors{mix}")
    chosen = result.metrics.get("range_method")
    if chosen:
        scores = ", ".join(f"{m} {v:.2f} dB" for m, v in chosen["candidates_sqnr_db"].items())
        lines.append(f"range method: {chosen['chosen']} (output SQNR on {chosen['samples']} calibration "
                     f"samples, ranges from the other {chosen['fit_samples']}: {scores})")
    lines += _mode_lines(result)
    ver = result.metrics.get("verification")
    if ver:
        lines.append(f"verification on {ver['samples']} held-out samples (FP32 vs quantized, ORT):")
        lines.append(f"  {'output':24s} {'SQNR dB':>8s} {'cosine':>9s} {'MSE':>10s} {'KL':>10s}")
        for name, m in ver["outputs"].items():
            lines.append(f"  {name[:24]:24s} {m['sqnr_db']:8.2f} {m['cosine']:9.5f} {m['mse']:10.3g} "
                         f"{m['kl']:10.3g}")
            lines += _group_lines(m.get("groups") or [])
        lines += _padding_lines(ver.get("padding_mask"))
        if ver.get("top1_agreement") is not None:
            lines.append(f"  top-1 agreement {ver['top1_agreement'] * 100:.2f} %")
        if ver.get("detections"):
            lines.append(f"  {detection_line(ver['detections'])}")
        if ver.get("task"):
            t = ver["task"]
            lines.append(f"  {t['metric']}: fp32 {t['fp32']:.4f}  quantized {t['quantized']:.4f}  "
                         f"drop {t['drop']:+.4f}")
        size = ver.get("size_bytes")
        if size:
            lines.append(f"  size {size['fp32'] / 1e6:.3f} MB → {size['quantized'] / 1e6:.3f} MB "
                         f"({size['quantized'] / size['fp32']:.2f}×)")
        lat = ver.get("latency_ms")
        if lat:
            cpu = f", CPU time {lat['cpu_ratio']:.2f}×" if "cpu_ratio" in lat else ""
            lines.append(f"  latency (ORT CPU, 1 thread, batch {lat.get('batch', 1)}) {lat['fp32']:.3f} ms → "
                         f"{lat['quantized']:.3f} ms ({lat['ratio']:.2f}×{cpu})")
    lines += _mixed_precision_lines(result)
    lines += _repair_lines(result.metrics)
    lines += get_backend(result.target).summary_lines(result)
    lines += _float_node_lines(result.metrics.get("float_nodes") or {})
    lines += _verdict_lines(result)
    return "\n".join(lines)


def _group_lines(groups: list[dict[str, Any]]) -> list[str]:
    """An output whose channels come in scales far apart: each scale group's own SQNR and cosine."""
    return [f"    channels {g['channels']:16s} {g['sqnr_db']:8.2f} {g['cosine']:9.5f}  (RMS {g['rms']:.3g}, "
            f"{g['count']} channels; judged on its own)" for g in groups]


def _padding_lines(mask: dict[str, Any] | None) -> list[str]:
    """One line: which outputs were measured over real tokens only, and their all-position SQNR."""
    if not mask:
        return []
    unmasked = ", ".join(f"{n} {m['sqnr_db']:.2f} dB" for n, m in mask["unmasked"].items())
    real = mask["positions"] - mask["padding"]
    return [f"  padding left out: {', '.join(mask['outputs'])} measured on the {real} of {mask['positions']} "
            f"[batch, seq] positions where {mask['input']} = 1 (all positions: {unmasked}; recipe "
            "[verification] mask_padding = false counts them)"]


def _mode_lines(result: BuildResult) -> list[str]:
    """``--mode dynamic|auto``: how many nodes quantize their activations at run time; unverified builds."""
    info = result.metrics.get("dynamic")
    if not info:
        return []
    nodes = info.get("nodes") or {}
    dynamic = sum(1 for n in nodes.values() if n.get("mode") == "dynamic")
    if info["mode"] == "auto":
        lines = [f"mode: auto — {dynamic} node(s) dynamic, {len(nodes) - dynamic} static, chosen per node by "
                 "measured output SQNR (report.json: metrics.dynamic.nodes)"]
    else:
        lines = [f"mode: dynamic — {dynamic} MatMul/Gemm/Conv node(s): int8 per-channel weights, activations "
                 "quantized at run time"]
    if info.get("verified") is False:
        lines.append("verification: none — UNVERIFIED (no --eval-data or --calib): nothing was compared "
                     "against FP32")
    return lines


def float_nodes(result: BuildResult, lowered: dict[str, str] | None = None,
                integer: dict[str, str] | None = None) -> dict[str, dict[str, str]]:
    """Every node that computes in float in the artifact, with its precision and the real reason: the
    plan's decision (recipe, latency guard, no int8 kernel, …) or the target's lowering's (``lowered``:
    name → reason, from ``Backend.float_nodes``), but those the artifact computes in integers
    (``integer``, from ``Backend.integer_nodes``)."""
    nodes: dict[str, dict[str, str]] = {}
    if result.plan is not None:
        for name, decision in result.plan.nodes.items():
            if name in (integer or {}):
                continue
            if decision.precision in (Precision.FP32, Precision.FP16) and not decision.integer_only:
                nodes[name] = {"precision": decision.precision.value, "reason": decision.reason}
    for name, reason in (lowered or {}).items():
        nodes.setdefault(name, {"precision": "fp32", "reason": reason})
    return dict(sorted(nodes.items()))


def speed_warnings(metrics: dict[str, Any]) -> list[str]:
    """A warning with the measured ratio when the int8 model ran slower than FP32 in ORT here (the
    target's own runtime warns through ``Backend.speed_warnings``)."""
    lat = (metrics.get("verification") or {}).get("latency_ms")
    if lat:
        ratio = lat.get("cpu_ratio", lat["ratio"])
        if ratio > SLOWER:
            return [f"the int8 model ran {ratio:.2f}× SLOWER than FP32 here (ORT CPU, 1 thread, batch "
                    f"{lat.get('batch', 1)}, CPU time; wall {lat['ratio']:.2f}×): Q/DQ around float nodes or "
                    "small int8 kernels cost more than int8 saves on this CPU; see the float nodes, or "
                    "deploy FP32 here"]
    return []


def _float_node_lines(nodes: dict[str, dict[str, str]], names_shown: int = 6) -> list[str]:
    """Float nodes grouped by reason, their names listed (the full list is in report.json)."""
    if not nodes:
        return []
    by_reason: dict[str, list[str]] = {}
    for name, entry in nodes.items():
        reason, label = entry["reason"], f"{entry['precision']}: "
        by_reason.setdefault(reason if reason.startswith(label) else label + reason, []).append(
            name or "<unnamed>")
    lines = [f"float nodes: {len(nodes)}"]
    for reason, names in by_reason.items():
        more = f", … {len(names) - names_shown} more in report.json" if len(names) > names_shown else ""
        lines.append(f"  {', '.join(names[:names_shown])}{more} — {reason}")
    return lines


def _verdict_lines(result: BuildResult) -> list[str]:
    verdict = result.verdict
    if verdict is None:
        return []
    lines = [f"verdict: {verdict.level}" + (f" — {'; '.join(verdict.reasons)}" if verdict.reasons else "")]
    if result.precision != "fp32":
        lines.append(f"  limits: {verdict.thresholds.describe()} (recipe [verdict] overrides)")
    return lines


def _repair_lines(metrics: dict[str, Any]) -> list[str]:
    """What the int8 build missed, what the dynamic build or mixed-precision plan reached, at what cost
    (``repair.py``)."""
    rep = metrics.get("repair")
    if not rep:
        return []
    unit = " dB" if rep["budget"].startswith("sqnr") else ""

    def cost(side: dict[str, Any]) -> str:
        ratio = side.get("latency_ratio")
        return f"{ratio:.2f}× FP32 latency" if ratio is not None else "latency not measured"

    names = {"dynamic": "the dynamic build (activations quantized at run time)",
             "mixed": f"a mixed-precision plan ({rep['nodes_above_int8']} nodes above int8)"}
    tried = [f"{names[k]} measured {rep[k]['achieved']:.4g}{unit}" for k in ("dynamic", "mixed") if k in rep]
    head = (f"repair: plain int8 measured {rep['int8']['achieved']:.4g}{unit}, under the verdict's ok line "
            f"{rep['budget']}; {'; '.join(tried)}")
    kept = rep["kept"]
    if kept == "int8":
        return [f"{head}: plain int8 kept (see the warning)"]
    artifact = f"{head}; {'the dynamic build' if kept == 'dynamic' else 'the mixed plan'} is the artifact"
    if rep[kept].get("latency_ratio") is None and rep["int8"].get("latency_ratio") is None:  # hls: untimed
        return [f"{artifact}; --no-repair keeps plain int8"]
    return [f"{artifact} ({cost(rep[kept])}; plain int8 {cost(rep['int8'])}); --no-repair keeps plain int8"]


def _mixed_precision_lines(result: BuildResult, shown: int = 12) -> list[str]:
    """Budgets against what the plan achieved, the nodes off the default precision and why."""
    mp = result.metrics.get("mixed_precision")
    if not mp:
        return []
    acc, size = mp["accuracy"], mp["size"]
    unit = " dB" if acc["budget"].startswith("sqnr") else ""
    size_text = f"{size['fraction']:.3f}× FP32 weight bytes ({size['bytes'] / 1e6:.2f} MB)"
    if size["budget_fraction"] is not None:
        size_text += f", budget {size['budget_fraction']:g}× {'met' if size['met'] else 'MISSED'}"
    on = f" ({acc['metric']})" if acc.get("metric") else ""
    where = "" if acc.get("in_runtime") is None else (
        f" (the worse of ORT's reference {acc['reference_semantics']:.4g}{unit} and the target runtime's "
        f"{acc['in_runtime']:.4g}{unit})")
    lines = [f"mixed precision {'met the budgets' if mp['met'] else 'MISSED A BUDGET'}: accuracy "
             f"{acc['budget']}{on} → {acc['achieved']:.4g}{unit}{where} {'met' if acc['met'] else 'MISSED'} "
             f"(plain int8 {acc['plain_int8_reference_semantics']:.4g}{unit}, reference Q/DQ); "
             f"size {size_text}",
             f"  precisions: {', '.join(f'{k} {v}' for k, v in mp['histogram'].items())} of "
             f"{mp['quantizable_nodes']} quantizable nodes ({mp['above_int8']} above int8; "
             f"{mp['graph_nodes']} graph nodes)"]
    odd = [(n, d) for n, d in mp["nodes"].items() if d["precision"] != "int8"]
    for name, d in odd[:shown]:
        lines.append(f"  {name}: {d['reason']}")
    if len(odd) > shown:
        lines.append(f"  … {len(odd) - shown} more non-int8 nodes in report.json")
    lines.append(f"  sensitivity: {mp['sensitivity']['json']}, {mp['sensitivity']['plot']}; "
                 f"plan as a recipe: {mp['plan_recipe']}")
    return lines
