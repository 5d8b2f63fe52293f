"""The verdict of a build: ``ok`` / ``degraded`` / ``collapsed`` (or ``unquantized``) from its verification.

A pure function of the measured numbers, so ``dsqc build``, ``dsqc batch`` and bundles judge alike.

Default thresholds, against the project's own benchmark (tools/bench/RESULTS.md, TRANSFORMERS.md):

- **collapsed** — any output below 6 dB SQNR, or below 0.90 cosine, or a task-metric drop above 0.10
  (10 points of accuracy). ORT's ``quantize_static`` on MiniLM (0.03 dB, cosine 0.35) and the
  PP-OCR-style detector of issue 12 (-2.29 dB, cosine 0.546) fall here; for a centred output, cosine
  0.90 is about 6.8 dB, so both limits describe the same loss of signal.
- **degraded** — any output below 15 dB, or below 0.98 cosine, or a drop above 0.01 (1 point).
  MiniLM with real weights quantizes to 16.4 dB / token cosine 0.9887 while its Lee-50 correlation
  stays within 0.0005 of FP32 (the project's acceptance bar), so 15 dB keeps that build ``ok``; its
  INT4-attention variant (13.5 dB, 0.976) and entropy-calibrated MiniLM (9.8 dB, Lee -0.08) are
  ``degraded``. The CNNs build at 37–43 dB and stay far from both limits.
- Each limit applies to every output and to every scale group of an output's channels
  (``metrics.scale_groups``): the real NudeNet YOLOv8n detector's default build measured 23.9 dB on its
  ``[1, 22, 2100]`` output, all of it box pixels, while its class probabilities (channels 4-21) measured
  -3.1 dB and its mAP@0.5 against FP32 was 0.41; judged per group it reads ``collapsed``.
- **unquantized** — an int8 build whose plan quantized no tensor: the artifact is the FP32 model and
  its "perfect" SQNR (inf) is no success.

An explicit ``--accuracy-budget`` is the degraded limit of its kind (``Thresholds.with_budget``).
Override any limit in the recipe::

    [verdict]
    degraded_sqnr_db = 20
    collapsed_drop = 0.05
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from dsqc.errors import RecipeError

LEVELS = ("ok", "degraded", "collapsed", "unquantized", "unverified")


@dataclass(frozen=True)
class Thresholds:
    """Limits below which (SQNR, cosine) or above which (task drop) a build is degraded / collapsed."""

    collapsed_sqnr_db: float = 6.0
    collapsed_cosine: float = 0.90
    collapsed_drop: float = 0.10
    degraded_sqnr_db: float = 15.0
    degraded_cosine: float = 0.98
    degraded_drop: float = 0.01

    @classmethod
    def from_table(cls, table: Mapping[str, Any], label: str = "recipe") -> Thresholds:
        """The recipe's ``[verdict]`` table over the defaults; unknown keys and bad numbers are errors."""
        known = [f.name for f in fields(cls)]
        for key, value in table.items():
            if key not in known:
                raise RecipeError(f"{label}: unknown key 'verdict.{key}'; allowed: {', '.join(known)}")
            if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
                raise RecipeError(f"{label}: verdict.{key} must be a number, got {value!r}")
        limits = cls(**{k: float(v) for k, v in table.items()})
        for kind in ("sqnr_db", "cosine"):
            if getattr(limits, f"collapsed_{kind}") > getattr(limits, f"degraded_{kind}"):
                raise RecipeError(f"{label}: verdict.collapsed_{kind} must not exceed "
                                  f"verdict.degraded_{kind}")
        if limits.collapsed_drop < limits.degraded_drop:
            raise RecipeError(f"{label}: verdict.collapsed_drop must not be below verdict.degraded_drop")
        return limits

    def with_budget(self, kind: str, value: float, recipe_keys: Collection[str]) -> Thresholds:
        """An explicit ``--accuracy-budget`` (``sqnr``/``cosine``/``drop``) is the user's own ok line: it
        replaces the degraded limit of its kind, unless the recipe's ``[verdict]`` sets that limit. A
        detector built to ``drop:0.05`` box agreement that meets it is not degraded by the default 0.01."""
        field = {"sqnr": "sqnr_db", "cosine": "cosine", "drop": "drop"}[kind]
        if f"degraded_{field}" in recipe_keys:
            return self
        collapsed = getattr(self, f"collapsed_{field}")
        collapsed = max(collapsed, value) if kind == "drop" else min(collapsed, value)
        return replace(self, **{f"degraded_{field}": value, f"collapsed_{field}": collapsed})

    def describe(self) -> str:
        return (f"degraded below {self.degraded_sqnr_db:g} dB SQNR or {self.degraded_cosine:g} cosine or "
                f"a task drop above {self.degraded_drop:g}; collapsed below {self.collapsed_sqnr_db:g} dB or "
                f"{self.collapsed_cosine:g} cosine or a drop above {self.collapsed_drop:g}")


@dataclass(frozen=True)
class Verdict:
    level: str
    reasons: tuple[str, ...]
    thresholds: Thresholds
    missed: frozenset[str] = frozenset()  # the limits crossed: "sqnr", "cosine", "drop"

    @property
    def ok(self) -> bool:
        return self.level == "ok"

    def budget(self) -> str | None:
        """The ``--accuracy-budget`` holding the first limit missed (SQNR, cosine, task drop) at its
        degraded line: what a search must reach for this verdict to be ok; ``None`` when none was missed."""
        t = self.thresholds
        lines = {"sqnr": t.degraded_sqnr_db, "cosine": t.degraded_cosine, "drop": t.degraded_drop}
        return next((f"{kind}:{value:g}" for kind, value in lines.items() if kind in self.missed), None)

    def suggested_budget(self) -> str:
        """``budget()``, or the SQNR degraded line where no limit was missed: what the advice offers."""
        return self.budget() or f"sqnr:{self.thresholds.degraded_sqnr_db:g}"

    def to_dict(self) -> dict[str, Any]:
        return {"level": self.level, "reasons": list(self.reasons), "thresholds": asdict(self.thresholds)}


def judge(outputs: Mapping[str, Mapping[str, Any]], task: Mapping[str, Any] | None,
          quantized_tensors: int, thresholds: Thresholds | None = None) -> Verdict:
    """The verdict from per-output ``sqnr_db``/``cosine`` (and those of each scale group of an output's
    channels, ``groups``), an optional task ``drop`` and the count of tensors the plan quantized. Reasons
    name each output or channel group that crossed a limit, worst level first."""
    limits = thresholds or Thresholds()
    if quantized_tensors == 0:
        return Verdict("unquantized", ("the plan quantized 0 tensors: the artifact computes in FP32 and "
                                       "its outputs equal FP32 (SQNR inf) because nothing was quantized",),
                       limits)
    collapsed: list[str] = []
    degraded: list[str] = []
    missed: set[str] = set()
    for name, m in outputs.items():
        parts = [(f"output '{name}'", m)] + [
            (f"output '{name}' channels {g['channels']} (RMS {float(g['rms']):.3g})", g)
            for g in m.get("groups", ())]
        for label, part in parts:
            sqnr, cos = float(part["sqnr_db"]), float(part["cosine"])
            if math.isnan(sqnr) or math.isnan(cos):
                collapsed.append(f"{label} is NaN")
                missed.add("sqnr")
                continue
            for value, low, high, what in ((sqnr, limits.collapsed_sqnr_db, limits.degraded_sqnr_db, "SQNR"),
                                           (cos, limits.collapsed_cosine, limits.degraded_cosine, "cosine")):
                unit = " dB" if what == "SQNR" else ""
                if value < high:
                    missed.add(what.lower())
                if value < low:
                    collapsed.append(f"{label} {what} {value:.4g}{unit} < {low:g}{unit}")
                elif value < high:
                    degraded.append(f"{label} {what} {value:.4g}{unit} < {high:g}{unit}")
    if task is not None:
        drop, metric = float(task["drop"]), task.get("metric", "task metric")
        if drop > limits.degraded_drop:
            missed.add("drop")
        if drop > limits.collapsed_drop:
            collapsed.append(f"{metric} dropped {drop:.4g} > {limits.collapsed_drop:g}")
        elif drop > limits.degraded_drop:
            degraded.append(f"{metric} dropped {drop:.4g} > {limits.degraded_drop:g}")
    if collapsed:
        return Verdict("collapsed", tuple(collapsed + degraded), limits, frozenset(missed))
    if degraded:
        return Verdict("degraded", tuple(degraded), limits, frozenset(missed))
    return Verdict("ok", (), limits)


def advice(verdict: Verdict, model: str, calib: str | None, out: str, integer_only: str | None = None) -> str:
    """The loud last line of a build that is not ``ok``: what happened and what to try. ``integer_only``:
    what to try on a target with no float layers (no fp32 recipe or mixed plan can help there)."""
    if verdict.level == "unquantized":
        return (f"NOTHING WAS QUANTIZED ({model}): 0 quantized tensors, the artifact is the FP32 model. "
                "See the float nodes and their reasons above and in report.json; force nodes to int8 with a "
                "recipe ([op_types.<Op>] precision = \"int8\"), or build with --precision fp32 if that is "
                "what you want")
    if verdict.level == "unverified":
        return (f"the build of {model} is UNVERIFIED: dynamic mode had no held-out data to compare against "
                f"FP32; rebuild with --eval-data DATA (or --calib DATA, whose last 20 % is held out)")
    shown = verdict.reasons[:3]
    why = "; ".join(shown) + (f"; … {len(verdict.reasons) - 3} more" if len(verdict.reasons) > 3 else "")
    analyze = f"dsqc analyze {model} --calib {calib or 'DATA'} -o {out}-analysis"
    budget = verdict.suggested_budget()
    if integer_only is not None:
        return f"verdict {verdict.level.upper()}: {why}. Try: {integer_only}"
    return (f"verdict {verdict.level.upper()}: {why}. Try: `{analyze}` to rank the sensitive nodes, then a "
            f"recipe keeping them in fp32 ([exclude] nodes = [...]), or --accuracy-budget {budget} for an "
            "automatic mixed-precision plan")
