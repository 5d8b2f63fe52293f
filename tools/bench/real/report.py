"""REAL.md: dsqc default, dsqc's best method and ORT's best configuration per case, then every run."""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from tools.bench.real.store import REPO


def machine() -> dict[str, str]:
    """CPU, cores, date, git commit of the measured tree, library versions."""
    import onnxruntime

    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    text = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    flags = next((ln.split(":", 1)[1].split() for ln in text.splitlines() if ln.startswith("flags")), [])
    isa = [f for f in flags if "vnni" in f or f in ("avx2", "avx512f", "amx_int8")]
    git = subprocess.run(
        ["git", "-C", str(REPO), "describe", "--always", "--dirty", "--abbrev=7"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    dsqc = subprocess.run(
        ["git", "-C", str(REPO), "log", "-1", "--format=%h %s", "--", "compiler", "passes", "backends"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return {
        "cpu": f"{cpu}, {os.cpu_count()} cores, {' '.join(isa) or 'no AVX2'}",
        "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "commit": git,
        "dsqc_code_commit": dsqc,
        "onnxruntime": onnxruntime.__version__,
        "load_average": f"{load:.1f}",
    }


def task_text(kind: str, task: dict[str, float]) -> str:
    if not task:
        return "–"
    if kind == "classifier":
        return f"top-1 agr {task['top1_agreement']:.3f}"
    if kind == "mnist":
        return f"acc {task['accuracy']:.4f}"
    if kind == "detector":
        return f"box agr {task['box_agreement']:.3f}, mAP50 {task['map50']:.3f}"
    if kind == "vad":
        return f"p>0.5 agr {task['speech_agreement']:.3f}, mean abs dp {task['prob_mae']:.4f}"
    if kind == "embedding":
        return f"cos {task['cosine_mean']:.4f} (min {task['cosine_min']:.3f})"
    return str(task)


def _num(value: float | None, fmt: str) -> str:
    return "–" if value is None else format(value, fmt)


def markdown(results: dict[str, Any], title: str) -> str:
    info = results["machine"]
    out = [
        f"# {title}",
        "",
        f"Machine: {info['cpu']}; load average {info['load_average']} at the start (shared; timing noisy). "
        f"Date: {info['date']}. Tree: `{info['commit']}` "
        f"(last dsqc code commit: {info['dsqc_code_commit']}). "
        f"ONNX Runtime {info['onnxruntime']}.",
        "",
        "Output SQNR vs FP32 on held-out inputs (dB); task metric vs FP32 (or labels); INT8/FP32 latency "
        "in ORT (batch 1, one thread, interleaved rounds, median of per-round ratios); file size ratio. "
        "dsqc: `dsqc build --target onnx` defaults; dsqc best: best of `--method "
        "minmax|percentile|entropy|mse` by SQNR; ORT best: best by SQNR of `quantize_static` (QDQ, per-"
        "channel, U8 activations / S8 weights) over MinMax/Entropy/Percentile x reduce_range off/on. "
        "Every quantizer calibrates on the same first N samples of the calibration file; dsqc verifies "
        "(and repairs a degraded build) on the next 16 samples of that file where it has them, else on "
        "the last fifth of the N, its default; no quantizer sees the held-out set measured here. FP32 "
        "rows: the input noise floor, SQNR of FP32 fed inputs moved by ±½ step of an 8-bit grid (what "
        "quantizing the inputs alone costs; a model this sensitive cannot rank quantizers above it). The "
        "ORT best row gives the range its configurations span: where it is under ~1 dB (the random-weight"
        " MobileNetV2 and EfficientNet-B0 graphs) the quantizers land within the resolution of the "
        "measurement and no row can rank them by 1 dB. "
        "Prepared by `python -m tools.bench.real.prepare`; cases in `.cache/real/*.json`.",
        "",
        "| model | quantizer | config | SQNR dB | task metric | latency x | size x |",
        "|---|---|---|---:|---|---:|---:|",
    ]
    for name, case in results["cases"].items():
        kind, rows = case["kind"], case["rows"]
        fp32 = rows.get("fp32", {})
        floor = case.get("noise_floor_db")
        floor_text = "" if floor is None else f"{floor:.1f} (input noise floor)"
        out.append(
            f"| **{name}** | FP32 | {case['n_calib']} calib / {case['n_eval']} held-out | {floor_text} | "
            f"{task_text(kind, fp32.get('task', {})) if kind == 'mnist' else ''} | 1 | 1 |"
        )
        ort = [r["sqnr_db"] for label, r in rows.items() if label.startswith("ort-")]
        best = rows[case["ort_best"]]["sqnr_db"] if case.get("ort_best") else None
        for role in ("dsqc", "dsqc_best", "ort_best"):
            label = case.get(role)
            if label is None:
                out.append(f"| | {role} | failed | | | | |")
                continue
            row = rows[label]
            config = label
            if role == "dsqc" and best is not None:
                config += f" ({row['sqnr_db'] - best:+.2f} dB vs ORT best)"
            if role == "ort_best" and len(ort) > 1:
                config += f" (its {len(ort)} configurations: {min(ort):.1f}–{max(ort):.1f} dB)"
            out.append(
                f"| | {role.replace('_', ' ')} | {config} | {row['sqnr_db']:.1f} | "
                f"{task_text(kind, row['task'])} | {_num(row.get('latency_ratio'), '.2f')} | "
                f"{row['size_ratio']:.2f} |"
            )
    out += [
        "",
        "## Every run (SQNR dB / task metric)",
        "",
        "| model | run | SQNR dB | task metric | note |",
        "|---|---|---:|---|---|",
    ]
    for name, case in results["cases"].items():
        for label, job in case["jobs"].items():
            row = case["rows"].get(label)
            if row is None:
                out.append(f"| {name} | {label} | – | – | {job.get('error', 'failed')} |")
            else:
                took = "reused from an earlier run" if job.get("reused") else f"{job['wall_s']:.0f} s"
                out.append(
                    f"| {name} | {label} | {row['sqnr_db']:.1f} | {task_text(case['kind'], row['task'])} | "
                    f"{took} |"
                )
    return "\n".join(out) + "\n"
