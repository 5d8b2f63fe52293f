"""``dsqc verify BUNDLE``: every file against the manifest's hash, the manifest against its own hash, and the
artifact re-run in its runtime on the bundle's recorded inputs (``check/``) where that runtime is here."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from dsqc.driver.check_vectors import Agreement, rerun
from dsqc.driver.manifest import (
    MANIFEST_NAME,
    UNHASHED,
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

    @property
    def ok(self) -> bool:
        return not self.problems and (self.agreement is None or self.agreement.ok)


def verify_folder(folder: Path) -> list[BundleCheck]:
    """A bundle, or every target bundle of a multi-target build folder (``targets.json``)."""
    subs = [] if (folder / MANIFEST_NAME).is_file() else target_folders(folder)
    return [verify_bundle(sub) for sub in subs] if subs else [verify_bundle(folder)]


def verify_bundle(folder: Path) -> BundleCheck:
    """Check ``folder``; a folder that is not a bundle raises ``NotABundleError`` (exit 2)."""
    manifest = read_manifest(folder)
    check = BundleCheck(folder, str(manifest.get("target")))
    if manifest.get("manifest_sha256") != body_sha256(manifest):
        check.problems.append("manifest.json: its content does not match its manifest_sha256 (edited)")
    listed = manifest["files"]
    for rel, entry in sorted(listed.items()):
        path = folder / rel
        check.files_checked += 1
        if not path.is_file():
            check.problems.append(f"{rel}: missing")
        elif sha256_file(path) != entry.get("sha256"):
            check.problems.append(f"{rel}: sha256 mismatch (changed since the build)")
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
