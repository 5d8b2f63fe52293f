"""``dsqc build MODEL --target trt,tflite,hls,onnx``: normalize and calibrate once, plan and lower per
target profile into ``OUT/<target>/``, then the cross-target parameter map (``params.csv``) and the
agreement of every artifact on the same held-out inputs (``agreement.json``, ``targets.json``), and
``top_manifest.json`` over those top-level files (``dsqc verify OUT`` checks it and every target's
bundle). Wall seconds go to the top-level ``build_info.json``, which no hash covers: with ``--no-latency``
two builds are byte-identical but for the ``build_info.json`` files.

Each target's artifacts are exactly what a single-target build of it writes (a test holds them
byte-identical; the bundle files that name the command differ); the whole ``OUT`` appears atomically
or not at all. With ``--no-latency`` the targets build concurrently (threads: ORT, LiteRT and gcc
release the GIL; the shared stages run once under a lock); with timing on they build one after
another, so each target's latency is measured undisturbed.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsqc.backends.registry import WrittenBuild, get_backend, io_names
from dsqc.driver.agreement import Agreement, agree
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.bundle import HTML_NAME, write_index_html
from dsqc.driver.bundle_output import staged_bundle
from dsqc.driver.manifest import write_top_manifest
from dsqc.driver.param_map import param_rows, write_params_csv
from dsqc.driver.pipeline import build
from dsqc.driver.shared_stages import SharedStages
from dsqc.errors import RecipeError

log = logging.getLogger(__name__)
PARAMS_NAME, AGREEMENT_NAME, INDEX_NAME = "params.csv", "agreement.json", "targets.json"


@dataclass
class MultiResult:
    out_dir: Path
    results: dict[str, BuildResult]
    agreement: Agreement | None
    seconds: float
    reused: list[str] = field(default_factory=list)  # shared stages the later targets did not re-run

    @property
    def failed(self) -> str | None:
        return next((f"{t}: {r.failed}" for t, r in self.results.items() if r.failed), None)


def parse_targets(spec: str) -> list[str]:
    """``"trt,tflite"`` → ``["trt", "tflite"]``; every name must be a registered target, none twice."""
    targets = [t.strip() for t in spec.split(",") if t.strip()]
    if not targets:
        raise RecipeError(f"--target {spec!r}: name at least one target")
    twice = sorted({t for t in targets if targets.count(t) > 1})
    if twice:
        raise RecipeError(f"--target {spec!r}: '{twice[0]}' is named twice")
    for target in targets:
        get_backend(target)  # unknown: one line listing the registered targets
    return targets


def options_per_target(targets: list[str], raw: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split ``-B`` options: ``hls.parallelism=8`` goes to hls only; a bare key goes to every named
    target that has it, and is an error when none has it."""
    per: dict[str, dict[str, Any]] = {t: {} for t in targets}
    for key, value in raw.items():
        target, dot, name = key.partition(".")
        if dot:
            if target not in per:
                raise RecipeError(f"-B {key}: '{target}' is not one of the targets built "
                                  f"({', '.join(targets)})")
            per[target][name] = value
            continue
        takers = [t for t in targets if key in _option_keys(t)]
        if not takers:
            raise RecipeError(f"-B {key}: none of the targets {', '.join(targets)} has this option; "
                              f"prefix it with its target (e.g. -B hls.{key}=…)")
        for t in takers:
            per[t][key] = value
    return per


def _option_keys(target: str) -> set[str]:
    options = get_backend(target).options
    return {f.name for f in dataclasses.fields(options)} if options is not None else set()


def build_targets(request: BuildRequest, targets: list[str]) -> MultiResult:
    """One build per target on shared stages, then the parameter map and the cross-target agreement."""
    start = time.perf_counter()
    options = options_per_target(targets, request.backend_options)
    shared = SharedStages()
    agreement = None
    with staged_bundle(request.out_dir) as staging:  # a rebuild replaces OUT whole
        def one(target: str) -> BuildResult:
            log.info("target %s", target)
            sub = dataclasses.replace(request, target=target, out_dir=staging / target,
                                      backend_options=options[target],  # one --dump-ir folder per target
                                      dump_ir=request.dump_ir / target if request.dump_ir else None)
            result = build(sub, shared)
            result.out_dir = request.out_dir / target
            return result

        workers = 1 if request.measure_latency else len(targets)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="dsqc-target") as pool:
            results = dict(zip(targets, pool.map(one, targets), strict=True))
        write_params_csv(staging / PARAMS_NAME, param_rows(results))
        normalized, data = shared.get("normalize"), shared.get("data")
        if data is not None and request.precision != "fp32":
            held_out = data[1]
            io = io_names(normalized.model)
            builds = {t: WrittenBuild(staging / t, r.artifacts, r.options, r.metrics, r.plan, *io,
                                      r.runtime_outputs) for t, r in results.items()}
            agreement = agree(normalized.model, builds, list(held_out.batches(request.calib_batch)))
            (staging / AGREEMENT_NAME).write_text(json.dumps(agreement.to_dict(), indent=2) + "\n")
        result = MultiResult(request.out_dir, results, agreement, time.perf_counter() - start, shared.hits)
        (staging / INDEX_NAME).write_text(json.dumps(_index(result), indent=2) + "\n")
        write_index_html(staging, targets, agreement.to_dict() if agreement else None)
        seconds = {t: sum(r.timings.values()) for t, r in results.items()} | {"total": result.seconds}
        write_top_manifest(staging, targets, [PARAMS_NAME, *([AGREEMENT_NAME] if agreement else []),
                                              INDEX_NAME, HTML_NAME], seconds)
    return result


def _index(result: MultiResult) -> dict[str, Any]:
    """``targets.json``: each target's folder, verdict and verification, and what was shared (sorted:
    concurrent targets hit the shared stages in any order); deterministic, the times are in
    ``build_info.json``."""
    def entry(target: str, r: BuildResult) -> dict[str, Any]:
        verification = r.metrics.get("verification", {})
        return {"folder": target, "report": f"{target}/report.json",
                "verdict": r.verdict.to_dict() if r.verdict else None,
                "min_sqnr_db": verification.get("min_sqnr_db"), "artifacts": [str(a) for a in r.artifacts],
                "failed": r.failed}

    return {"targets": {t: entry(t, r) for t, r in result.results.items()},
            "shared_stages_reused": sorted(result.reused),
            "files": [PARAMS_NAME, *([AGREEMENT_NAME] if result.agreement else [])]}
