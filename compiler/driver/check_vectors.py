"""Check vectors: a few held-out inputs, the FP32 outputs and the artifact's own outputs, kept in the
bundle (``check/*.npy``) so ``dsqc verify`` can run the artifact again in its runtime and compare.

The target's backend runs its artifact (``Backend.run_artifact`` on a ``WrittenBuild``, which holds only
what a bundle folder has); an artifact that carries its own vectors (``Backend.self_checking``: the hls
testbench) records that instead and is re-checked by ``Backend.self_check``.
``.npy`` files are byte-deterministic (``np.savez`` would stamp the time into its zip).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from dsqc.backends.registry import WrittenBuild, get_backend
from dsqc.metrics import sqnr_db

log = logging.getLogger(__name__)

CHECK_DIR = "check"
MAX_SAMPLES = 8
MAX_INPUT_BYTES = 1 << 20  # the vectors stay small: fewer samples for large inputs (at least one)
Feeds = dict[str, np.ndarray]


@dataclass
class Agreement:
    """One re-run: the artifact, the runtime, per-output max |diff| against the recorded run."""

    artifact: str
    runtime: str
    ok: bool
    detail: str
    outputs: dict[str, dict[str, float]] = field(default_factory=dict)


def first_samples(batches: list[Feeds]) -> Feeds:
    """Up to ``MAX_SAMPLES`` held-out samples, fewer when their inputs exceed ``MAX_INPUT_BYTES``."""
    names = list(batches[0])
    feeds = {n: np.concatenate([b[n] for b in batches]) for n in names}
    per_sample = sum(a[:1].nbytes for a in feeds.values())
    count = max(1, min(MAX_SAMPLES, MAX_INPUT_BYTES // max(per_sample, 1), len(feeds[names[0]])))
    return {n: np.ascontiguousarray(a[:count]) for n, a in feeds.items()}


def _as_float(outputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {n: v if v.dtype.hasobject else np.asarray(v, np.float32) for n, v in outputs.items()}


def record(build: WrittenBuild, target: str, eval_feeds: list[Feeds],
           fp32_outputs: Callable[[Feeds], dict[str, np.ndarray]]) -> dict[str, Any] | None:
    """Write ``check/`` into the staged bundle ``build.folder`` and return the manifest's section.

    ``fp32_outputs(feeds)`` runs the FP32 model (ORT) on the chosen samples.
    """
    backend = get_backend(target)
    if backend.self_checking is not None:
        own = backend.self_checking
        return {"runtime": own.runtime, "artifact": own.artifact, "how": own.how}
    artifact = backend.runtime_artifact(build.artifacts)
    if artifact is None or not eval_feeds:
        return None
    feeds = first_samples(eval_feeds)
    names = list(feeds)
    ran = backend.run_artifact(build, [feeds])
    section: dict[str, Any] = {"artifact": artifact.as_posix(), "runtime": backend.runtime_name}
    if ran is None:
        return section | {"skipped": f"the {backend.runtime_name} is not installed here: no vectors recorded"}
    got = _as_float(ran)
    reference = fp32_outputs(feeds)
    if any(a.dtype.hasobject for a in (*feeds.values(), *got.values())):
        return section | {"skipped": "string tensors: no vectors recorded (.npy would need pickle)"}
    check = build.folder / CHECK_DIR
    check.mkdir()
    section |= {"samples": len(feeds[names[0]]), "inputs": [], "outputs": []}
    for k, name in enumerate(names):
        np.save(check / f"input_{k}.npy", feeds[name], allow_pickle=False)
        section["inputs"].append({"name": name, "file": f"{CHECK_DIR}/input_{k}.npy"})
    for k, (name, value) in enumerate(got.items()):
        np.save(check / f"output_{k}.npy", value, allow_pickle=False)
        entry = {"name": name, "file": f"{CHECK_DIR}/output_{k}.npy"}
        fp32 = reference.get(name)
        if fp32 is None and len(reference) == len(got):
            fp32 = list(reference.values())[k]  # a runtime that names its outputs its own way: same order
        if fp32 is not None and fp32.shape == value.shape:
            np.save(check / f"fp32_{k}.npy", fp32, allow_pickle=False)
            entry["fp32_file"] = f"{CHECK_DIR}/fp32_{k}.npy"
        section["outputs"].append(entry)
    return section


def bundle_build(folder: Path, manifest: dict[str, Any], section: dict[str, Any]) -> WrittenBuild:
    """What the backend's runtime needs, read back from a bundle: the recorded artifact, the input and
    output names of the recorded vectors, and the manifest's metrics."""
    return WrittenBuild(folder, [Path(section["artifact"])], {}, manifest.get("metrics") or {}, None,
                        [e["name"] for e in section.get("inputs", [])],
                        [e["name"] for e in section.get("outputs", [])])


def rerun(folder: Path, manifest: dict[str, Any], section: dict[str, Any]) -> Agreement:
    """Run the bundle's artifact again on its recorded inputs; agreement within one output LSB (1 % of the
    output's range) — bit-exact is expected on the same machine, ±1 LSB across CPUs. A self-checking
    artifact (``how`` in the section) runs its own check instead."""
    backend = get_backend(str(manifest.get("target")))
    build = bundle_build(folder, manifest, section)
    artifact = section["artifact"]
    if "how" in section:
        own = backend.self_check(build)
        return Agreement(artifact, own.runtime, own.ok, own.detail)
    if "skipped" in section:
        return Agreement(artifact, section["runtime"], True, f"not re-run: {section['skipped']}")
    inputs = {e["name"]: np.load(folder / e["file"], allow_pickle=False) for e in section["inputs"]}
    ran = backend.run_artifact(build, [inputs])
    if ran is None:
        return Agreement(artifact, section["runtime"], True,
                         f"not re-run: the {backend.runtime_name} is not installed here")
    got = _as_float(ran)
    ok, rows, worst = True, {}, ""
    for k, entry in enumerate(section["outputs"]):
        want = np.load(folder / entry["file"], allow_pickle=False)
        have = got.get(entry["name"], list(got.values())[k] if len(got) > k else None)
        if have is None or have.shape != want.shape:
            why = f"output {entry['name']!r} missing or reshaped"
            return Agreement(artifact, section["runtime"], False, why)
        diff = float(np.max(np.abs(have - want))) if want.size else 0.0
        span = float(np.max(want) - np.min(want)) if want.size else 0.0
        row = {"max_abs_diff": diff, "tolerance": span / 100}
        if "fp32_file" in entry:
            fp32 = np.load(folder / entry["fp32_file"])
            keep = _real_tokens(manifest, entry["name"], inputs, fp32.shape)
            ref, mine = (fp32, have) if keep is None else (fp32[keep], have[keep])
            row["sqnr_db_vs_fp32"] = float(sqnr_db(ref, mine))
        rows[entry["name"]] = row
        if diff > row["tolerance"]:
            ok, worst = False, f"output {entry['name']!r} differs by {diff:.4g} (> {row['tolerance']:.4g})"
    detail = worst or ("bit-exact" if all(r["max_abs_diff"] == 0 for r in rows.values()) else "within 1 LSB")
    return Agreement(artifact, section["runtime"], ok, detail, rows)


def _real_tokens(manifest: dict[str, Any], output: str, inputs: dict[str, np.ndarray],
                 shape: tuple[int, ...]) -> np.ndarray | None:
    """The build's padding mask ([batch, seq], True = real token) where its verification measured
    ``output`` over real tokens only; None where it measured every position."""
    mask = ((manifest.get("metrics") or {}).get("verification") or {}).get("padding_mask") or {}
    keep = inputs.get(str(mask.get("input")))
    if output not in (mask.get("outputs") or []) or keep is None or tuple(keep.shape) != tuple(shape[:2]):
        return None
    return keep.astype(bool)
