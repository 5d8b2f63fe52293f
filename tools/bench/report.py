"""RESULTS.md: the machine, one table per model, the calibration-only row, and the issue's checks."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from importlib import metadata
from pathlib import Path
from typing import Any

from tools.bench.checks import calibration_rows, checks


def machine() -> dict[str, Any]:
    cpu, flags = "unknown", set[str]()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and cpu == "unknown":
                cpu = value.strip()
            if key.strip() == "flags" and not flags:
                flags = set(value.split())
        mem = next(ln for ln in Path("/proc/meminfo").read_text().splitlines() if ln.startswith("MemTotal"))
        ram_gb = round(int(mem.split()[1]) / 2**20, 1)
    except (OSError, StopIteration):
        ram_gb = 0.0
    versions = {}
    for pkg in ("onnxruntime", "onnx", "numpy", "dsqc", "torch"):
        try:
            versions[pkg] = metadata.version(pkg)
        except metadata.PackageNotFoundError:
            versions[pkg] = "-"
    return {"cpu": cpu, "cores": os.cpu_count(), "ram_gb": ram_gb, "python": platform.python_version(),
            "simd": " ".join(sorted(f for f in flags if f in {"avx2", "avx512f", "avx512_vnni", "avx_vnni"})),
            "versions": versions,
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
            "load_avg": os.getloadavg(), "source": source_state()}


def source_state() -> dict[str, Any]:
    """The dsqc commit benchmarked and the source files that differed from it."""
    root = Path(__file__).resolve().parents[2]

    def git(*args: str) -> str:
        try:
            return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = [line[3:] for line in git("status", "--porcelain", "--", "compiler", "passes", "backends",
                                      "models").splitlines()]
    return {"commit": git("rev-parse", "--short", "HEAD").strip() or "unknown", "dirty": dirty}


def _f(x: Any, fmt: str) -> str:
    return "—" if x is None else format(x, fmt)


def task_text(kind: str, t: dict[str, float] | None) -> str:
    if not t:
        return "—"
    if kind == "mnist":
        return f"acc {100 * t['accuracy']:.2f} %"
    if kind == "minilm":
        return (f"cos {t['cosine_mean']:.4f} (min {t['cosine_min']:.3f}) · Lee {t['lee50_pearson']:.4f} "
                f"· WS353 {t['wordsim353_spearman']:.4f}")
    if "top1_agreement" in t:
        return f"top-1 agree {100 * t['top1_agreement']:.1f} % · cos {t['cosine_mean']:.4f}"
    return f"cos {t['cosine_mean']:.5f}"


def model_table(name: str, res: dict[str, Any], default: str = "default") -> list[str]:
    case, rows = res["case"], res["evaluation"].get("rows", {})
    lines = [f"### {name}", "", f"Calibration: {case['calib_data']}. Held out: {case['eval_data']}.", "",
             "| quantizer | quantize s | peak RSS MB (Δ) | SQNR dB | task | latency ms | INT8/FP32 | "
             "CPU-time INT8/FP32 | size |",
             "|---|---:|---:|---:|---|---:|---:|---:|---:|"]
    fp = rows.get("fp32", {})
    lines.append(f"| FP32 | — | — | — | {task_text(case['kind'], fp.get('task'))} | "
                 f"{_f(fp.get('latency_ms'), '.3f')} | 1.00 | 1.00 | {_f(fp.get('size_mb'), '.2f')} MB |")
    for label, q in res["quantize"].items():
        if not q.get("ok"):
            lines.append(f"| {label} | failed | — | — | {q.get('error', '')[:120]} | — | — | — | — |")
            continue
        r = rows.get(label, {})
        shown = f"dsqc (default: {default})" if label == "dsqc" else label
        wall, rss = f"{q['wall_s']:.2f}", f"{q['peak_rss_mb']:.0f} (+{q['delta_rss_mb']:.0f})"
        if "pre_process_s" in q:  # ORT: quant_pre_process share of the wall time, quantize_static's own peak
            wall += f" (pre {q['pre_process_s']:.2f})"
            rss += f" (q_s {q['quantize_static_peak_rss_mb']:.0f})"
        lines.append(
            f"| {shown} | {wall} | {rss} | "
            f"{_f(r.get('sqnr_db'), '.2f')} | {task_text(case['kind'], r.get('task'))} | "
            f"{_f(r.get('latency_ms'), '.3f')} | {_f(r.get('latency_ratio'), '.2f')} | "
            f"{_f(r.get('cpu_latency_ratio'), '.2f')} | {_f(r.get('size_ratio'), '.3f')} |")
    if not res["evaluation"].get("ok"):
        lines.append(f"\nEvaluation failed: {res['evaluation'].get('error')}")
    return [*lines, ""]


def calib_table(c: dict[str, Any]) -> list[str]:
    lines = [f"## Calibration only: {c['model']}, {c['samples']} samples, batch {c['batch']}", "",
             f"Each job ran {c.get('repeats', 1)} times, interleaved, in its own process: median wall time, "
             "largest peak RSS. dsqc calibrates the tensors its placement quantizes; both ORT jobs run on "
             "the same dsqc-normalized FP32 model.", "",
             "| job | wall s | CPU s | peak RSS MB | Δ RSS MB (above imports + samples) |",
             "|---|---:|---:|---:|---:|"]
    for label, r in c.items():
        if isinstance(r, dict):
            if r.get("ok"):
                lines.append(f"| {label} | {r['wall_s']:.2f} | {r['cpu_s']:.2f} | {r['peak_rss_mb']:.0f} | "
                             f"{r['delta_rss_mb']:.0f} |")
            else:
                lines.append(f"| {label} | failed: {r.get('error')} | — | — | — |")
    return [*lines, ""]


def profiles(results: dict[str, Any]) -> list[str]:
    lines: list[str] = []
    for name, res in results["models"].items():
        for label, row in res["evaluation"].get("rows", {}).items():
            if "profile" in row:
                ops = ", ".join(f"{k} {v:.3f}" for k, v in list(row["profile"]["ops_ms"].items())[:7])
                lines.append(f"- {name} / {label}: {ops}")
    if not lines:
        return []
    return ["## Where the time goes (ORT profiler, 1 thread, ms per run by op type)", "",
            "Shown for every model whose INT8/FP32 ratio exceeds 1.0 (FP32 alongside).", "", *lines, ""]


def _source(s: dict[str, Any] | None) -> str:
    if not s:
        return "unknown commit"
    dirty = f" + uncommitted changes in {len(s['dirty'])} files" if s["dirty"] else ""
    return f"commit {s['commit']}{dirty}"


def render(results: dict[str, Any]) -> str:
    m = results["machine"]
    v = m["versions"]
    head = [
        "# dsqc vs ONNX Runtime quantize_static", "",
        "Runs:", "",
        *[f"- `{('python -m tools.bench ' + h['argv']).strip()}` on {h['date']}, load average "
          f"{h['load_avg'][0]:.2f} at start, dsqc at {_source(h.get('source'))}"
          for h in results.get("history", [])], "",
        f"Machine: {m['cpu']}, {m['cores']} cores ({m['simd']}), {m['ram_gb']} GB RAM; Python {m['python']}, "
        f"onnxruntime {v['onnxruntime']}, onnx {v['onnx']}, numpy {v['numpy']}, dsqc {v['dsqc']}, "
        f"torch {v['torch']}. Other jobs shared the machine; `--eval-only` reruns re-measure SQNR, task "
        "and latency with the quantized models and quantize numbers of the first run.", "",
        "Columns: quantize wall time and peak RSS of the quantizer's own process (Δ = above the process "
        "after imports); SQNR of the first output vs FP32 on the held-out inputs; task metric; ORT CPU "
        "batch-1, 1-thread median latency (FP32 and all quantized models back to back, in alternating order, "
        "over several rounds; the best round is shown: other jobs only add time); CPU-time ratio = the same "
        "with the calling thread's CPU time (ORT computes inline with one thread), immune to other jobs; "
        "size = INT8 file / FP32 file.",
        "dsqc: `dsqc.driver.pipeline.build(target='onnx')` as the CLI runs it (latency guard on), "
        "`dsqc` with the "
        "default method, `dsqc-<method>` with `method=...`; its wall time leaves out the verification phase. "
        "ORT: `quant_pre_process` + `quantize_static(QDQ, per_channel=True, QUInt8 activations, QInt8 "
        "weights)`; `-rr` adds `reduce_range=True` (ORT's advice for CPUs without VNNI, as here); "
        "`pre` = the quant_pre_process share of the wall time, `q_s` = peak RSS of quantize_static alone.",
        "",
        "## Checks against issue 3", "",
        *[f"- **{status}** {claim}: {detail}" for claim, status, detail in checks(results)], "",
        "## Per model", ""]
    default = results.get("dsqc_default_method", "default")
    body = [line for name, res in results["models"].items() for line in model_table(name, res, default)]
    calib = [line for c in calibration_rows(results) for line in calib_table(c)]
    return "\n".join([*head, *body, *calib, *profiles(results)]) + "\n"
