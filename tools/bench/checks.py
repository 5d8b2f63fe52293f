"""The issue's acceptance numbers, computed from a results dict: ``(claim, PASS|FAIL|n/a, detail)``."""

from __future__ import annotations

from typing import Any

Check = tuple[str, str, str]
NOISE = 0.03  # latency ratios closer than this count as equal (run-to-run spread seen here)


def primary(labels: list[str]) -> str | None:
    """The default dsqc build (``dsqc``; ``dsqc-entropy`` in results written before it existed)."""
    for label in ("dsqc", "dsqc-entropy"):
        if label in labels:
            return label
    return next((k for k in labels if k.startswith("dsqc-")), None)


def _rows(results: dict[str, Any], model: str) -> dict[str, Any]:
    return dict(results["models"].get(model, {}).get("evaluation", {}).get("rows", {}))


def _status(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def mnist_check(results: dict[str, Any]) -> Check | None:
    rows = _rows(results, "mnist")
    main = primary(list(rows))
    if not main:
        return None
    fp = rows["fp32"]["task"]["accuracy"]
    drops = {k: 100 * (fp - r["task"]["accuracy"]) for k, r in rows.items() if k != "fp32"}
    detail = ", ".join(f"{k} {100 * rows[k]['task']['accuracy']:.2f} % ({-d:+.2f} pt)"
                       for k, d in drops.items())
    return ("MNIST INT8 accuracy within 0.3 pt of FP32", _status(drops[main] <= 0.3),
            f"FP32 {100 * fp:.2f} %; {detail}")


def minilm_checks(results: dict[str, Any]) -> list[Check]:
    rows = _rows(results, "minilm")
    main = primary(list(rows))
    if not main:
        return []
    t, fp = rows[main]["task"], rows["fp32"]["task"]
    others = ", ".join(f"{k} {r['task']['cosine_mean']:.4f}"
                       for k, r in rows.items() if k not in ("fp32", main))
    lee = {k: r["task"]["lee50_pearson"] - fp["lee50_pearson"] for k, r in rows.items() if k != "fp32"}
    return [
        ("MiniLM embedding cosine to FP32 mean ≥ 0.99", _status(t["cosine_mean"] >= 0.99),
         f"{main} {t['cosine_mean']:.4f} (min {t['cosine_min']:.4f}); {others}"),
        ("MiniLM Lee-50 within 0.01 of FP32", _status(abs(lee[main]) <= 0.01),
         f"FP32 {fp['lee50_pearson']:.4f}; " + ", ".join(f"{k} {d:+.4f}" for k, d in lee.items())),
    ]


def calibration_rows(results: dict[str, Any]) -> list[dict[str, Any]]:
    rows = results.get("calibration") or []
    return [rows] if isinstance(rows, dict) else list(rows)  # one dict in results written before lists


def calibration_checks(results: dict[str, Any]) -> list[Check]:
    return [check for c in calibration_rows(results) for check in _calibration_checks(c)]


def _calibration_checks(c: dict[str, Any]) -> list[Check]:
    ours = next((v for k, v in c.items() if k.startswith("dsqc calibrate") and isinstance(v, dict)), {})
    plain, static = c.get("plain ORT FP32 pass", {}), c.get("ORT quantize_static(Entropy)", {})
    out: list[Check] = []
    if ours.get("ok") and static.get("ok"):
        ratio, dratio = ours["peak_rss_mb"] / static["peak_rss_mb"], ours["delta_rss_mb"] / max(
            static["delta_rss_mb"], 1e-9)
        out.append((f"{c['model']} ({c['samples']} samples) entropy calibration peak RSS ≤ 1/3 of "
                    "quantize_static(Entropy)",
                    _status(ratio <= 1 / 3),
                    f"{ours['peak_rss_mb']:.0f} vs {static['peak_rss_mb']:.0f} MB = {ratio:.3f} "
                    f"(above the baseline: {ours['delta_rss_mb']:.0f} vs {static['delta_rss_mb']:.0f} MB "
                    f"= {dratio:.3f})"))
    if ours.get("ok") and plain.get("ok"):
        ratio = ours["wall_s"] / plain["wall_s"]
        cpu = ours["cpu_s"] / plain["cpu_s"] if plain.get("cpu_s") else float("nan")
        out.append((f"{c['model']} ({c['samples']} samples) entropy calibration wall ≤ 1.5× a plain ORT pass",
                    _status(ratio <= 1.5),
                    f"{ours['wall_s']:.2f} s vs {plain['wall_s']:.2f} s = {ratio:.2f}× "
                    f"(CPU time {ours.get('cpu_s', 0):.2f} vs {plain.get('cpu_s', 0):.2f} s = {cpu:.2f}×)"))
    return out


def latency_checks(results: dict[str, Any]) -> list[Check]:
    over, worse, seen = [], [], []
    for name in results["models"]:
        rows = _rows(results, name)
        main = primary(list(rows))
        if not main or "latency_ratio" not in rows[main]:
            continue
        ratio = rows[main]["latency_ratio"]
        ort = {k: r["latency_ratio"] for k, r in rows.items()
               if k.startswith("ort-") and "latency_ratio" in r}
        cpu = rows[main].get("cpu_latency_ratio")
        seen.append(f"{name} {ratio:.2f}" + (f" [CPU {cpu:.2f}]" if cpu else "")
                    + (f" (ORT best {min(ort.values()):.2f})" if ort else ""))
        if ratio > 1.0:
            over.append(name)
        if ort and ratio > min(ort.values()) + NOISE:
            worse.append(f"{name} vs {min(ort, key=lambda k: ort[k])}")
    if not seen:
        return []
    return [("INT8/FP32 latency ≤ 1.0 on every model", _status(not over),
             "; ".join(seen) + (f" — over 1.0: {', '.join(over)}" if over else "")),
            (f"dsqc latency never worse than ORT's best quantized model (tolerance {NOISE})",
             _status(not worse),
             "worse on: " + ", ".join(worse) if worse else "never worse")]


def checks(results: dict[str, Any]) -> list[Check]:
    out = [c for c in [mnist_check(results)] if c]
    return [*out, *minilm_checks(results), *calibration_checks(results), *latency_checks(results)]
