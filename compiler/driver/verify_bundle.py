"""``dsqc verify BUNDLE``: every file against the manifest's hash, the manifest against its own hash, and the
artifact re-run in its runtime on the bundle's recorded inputs (``check/``) where that runtime is here. A
multi-target folder: its top-level files against ``top_manifest.json``, then every target's bundle."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from dsqc.driver.check_vectors import Agreement, rerun
from dsqc.driver.manifest import (
    BUILD_INFO_NAME,
    MANIFEST_NAME,
    TOP_FORMAT,
    TOP_MANIFEST,
    UNHASHED,
    NotABundleError,
    body_sha256,
    read_manifest,
    sha256_file,
    target_folders,
)

DERIVED = ("debug.json",)  # what `dsqc debug OUT` writes into a finished bundle by default


@dataclass
class BundleCheck:
    folder: Path
    target: str
    files_checked: int = 0
    problems: list[str] = field(default_factory=list)  # one line each, naming the file
    notes: list[str] = field(default_factory=list)
    agreement: Agreement | None = None
    top_level: bool = False  # the top of a multi-target folder (no artifact of its own)

    @property
    def ok(self) -> bool:
        return not self.problems and (self.agreement is None or self.agreement.ok)


def verify_folder(folder: Path) -> list[BundleCheck]:
    """A bundle, or every target bundle of a multi-target build folder (``targets.json``)."""
    subs = [] if (folder / MANIFEST_NAME).is_file() else target_folders(folder)
    if not subs:
        return [verify_bundle(folder)]
    top = [verify_top(folder, subs)] if (folder / TOP_MANIFEST).is_file() else []
    return top + [verify_bundle(sub) for sub in subs]


def verify_top(folder: Path, subs: list[Path]) -> BundleCheck:
    """The top-level files of a multi-target folder against ``top_manifest.json``; the target folders
    are left to their own manifests."""
    path = folder / TOP_MANIFEST
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise NotABundleError(f"{path}: unreadable ({type(exc).__name__})") from None
    if not isinstance(manifest, dict) or manifest.get("format") != TOP_FORMAT or \
            not isinstance(manifest.get("files"), dict):
        raise NotABundleError(f"{path}: not a {TOP_FORMAT} manifest (no 'format'/'files')")
    check = BundleCheck(folder, ",".join(map(str, manifest.get("targets") or [])), top_level=True)
    if manifest.get("manifest_sha256") != body_sha256(manifest):
        check.problems.append(f"{TOP_MANIFEST}: its content does not match its manifest_sha256 (edited)")
    _check_files(folder, manifest["files"], check)
    inside = {sub.relative_to(folder).parts[0] for sub in subs}
    for item in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = item.relative_to(folder).as_posix()
        if item.relative_to(folder).parts[0] not in inside and rel not in manifest["files"] and \
                rel not in (TOP_MANIFEST, BUILD_INFO_NAME):
            check.problems.append(f"{rel}: not in the manifest (added after the build)")
    return check


def _check_files(folder: Path, listed: dict[str, dict[str, str]], check: BundleCheck) -> None:
    for rel, entry in sorted(listed.items()):
        path = folder / rel
        check.files_checked += 1
        if not path.is_file():
            check.problems.append(f"{rel}: missing")
        elif sha256_file(path) != entry.get("sha256"):
            check.problems.append(f"{rel}: sha256 mismatch (changed since the build)")


def verify_bundle(folder: Path) -> BundleCheck:
    """Check ``folder``; a folder that is not a bundle raises ``NotABundleError`` (exit 2)."""
    manifest = read_manifest(folder)
    check = BundleCheck(folder, str(manifest.get("target")))
    if manifest.get("manifest_sha256") != body_sha256(manifest):
        check.problems.append("manifest.json: its content does not match its manifest_sha256 (edited)")
    listed = manifest["files"]
    _check_files(folder, listed, check)
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        rel = path.relative_to(folder).as_posix()
        if rel in DERIVED:
            check.notes.append(f"{rel}: written by a later dsqc command, not part of the build (not hashed)")
        elif rel not in listed and rel not in UNHASHED:
            check.problems.append(f"{rel}: not in the manifest (added after the build)")
    section = (manifest.get("metrics") or {}).get("check_vectors")
    if section and not check.problems:  # re-run only what the hashes vouch for
        check.agreement = rerun(folder, manifest, section)
    return check


def format_check(check: BundleCheck) -> str:
    if check.top_level:
        lines = [f"dsqc verify {check.folder}: top level of targets {check.target}, "
                 f"{check.files_checked} files"]
        lines += [f"  MISMATCH {problem}" for problem in check.problems]
        lines.append("  hashes: all top-level files match top_manifest.json" if check.ok else
                     "dsqc: top level FAILED verification")
        return "\n".join(lines)
    lines = [f"dsqc verify {check.folder}: target {check.target}, {check.files_checked} files"]
    lines += [f"  MISMATCH {problem}" for problem in check.problems]
    lines += [f"  note: {note}" for note in check.notes]
    if not check.problems:
        lines.append("  hashes: all files match the manifest")
    a = check.agreement
    if a is not None:
        lines.append(f"  re-run {a.artifact} in {a.runtime}: {'ok' if a.ok else 'MISMATCH'} — {a.detail}")
        for name, row in a.outputs.items():
            sqnr = f", SQNR vs FP32 {row['sqnr_db_vs_fp32']:.2f} dB" if "sqnr_db_vs_fp32" in row else ""
            lines.append(f"    {name}: max |diff| {row['max_abs_diff']:.3g} "
                         f"(tolerance {row['tolerance']:.3g}){sqnr}")
    elif not check.problems:
        lines.append("  re-run: skipped (no recorded vectors)")
    lines.append("dsqc: bundle OK" if check.ok else "dsqc: bundle FAILED verification")
    return "\n".join(lines)
