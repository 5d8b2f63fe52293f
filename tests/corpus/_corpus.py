"""The corpus format: a case makes its inputs in a folder and states the exact outcome.

A refusal is the exact one line on stderr (``{tmp}`` stands for the case folder), exit code 2, no
traceback, no other stderr line, and the output folder as it was before (absent, unless the case
made it) with no staging folder left beside it. A success is exit 0, the artifacts, a report that
did not fail, and the int8 nodes it must have quantized.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import subprocess
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from pathlib import Path

from dsqc.driver.cli import main

OUT = "out"  # every case builds into {tmp}/out


@dataclass
class Outcome:
    rc: int
    stdout: str
    stderr: str

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]


@dataclass(frozen=True)
class Built:
    """What a successful build must show."""

    artifacts: tuple[str, ...]
    int8_nodes: tuple[str, ...] = ()  # nodes the plan must put in int8 (all of them, by name)
    fp32_nodes: tuple[str, ...] = ()  # nodes the plan must keep in fp32
    min_sqnr: float = 25.0  # every output's SQNR in the build's own verification, dB
    exact_outputs: tuple[str, ...] = ()  # outputs no int8 node touches: SQNR inf (identical)
    warnings: tuple[str, ...] = ()  # the exact stderr lines (``{tmp}`` = the case folder; a line ending
    # in "…" is matched up to there: its numbers depend on the CPU's int8 kernels)
    check: Callable[[Path], None] | None = None  # extra checks on the output folder


@dataclass(frozen=True)
class Case:
    id: str
    category: str
    make: Callable[[Path], list[str]]  # writes the inputs, returns the CLI arguments (no -o)
    refuse: str | None = None
    built: Built | None = None
    run: Callable[[Path, list[str]], Outcome] | None = None  # default: in-process dsqc.driver.cli.main
    xfail: str | None = None
    before: dict[str, str] = field(default_factory=dict)  # files in OUT before the run (must survive)
    out: str = OUT  # the output folder, relative to the case folder
    exit_code: int = 2  # of a refusal (130/143 for an interrupted build)
    environment: Callable[[Path], AbstractContextManager[None]] | None = None  # e.g. mounts a small disk


class _Records(logging.Handler):
    """WARNING+ log records: in the real CLI they reach stderr (basicConfig at WARNING)."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.levelname} {record.name}: {record.getMessage()}")


def run_in_process(tmp: Path, args: list[str]) -> Outcome:
    """``dsqc.driver.cli.main(args)`` with stdout/stderr captured; an exception escaping it fails the case."""
    out, err, records = io.StringIO(), io.StringIO(), _Records()
    root = logging.getLogger()
    root.addHandler(records)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            rc = main(args)
    finally:
        root.removeHandler(records)
    stderr = "\n".join([*records.lines, err.getvalue()])
    return Outcome(rc, out.getvalue(), stderr)


def run_subprocess(tmp: Path, args: list[str], **kwargs: object) -> Outcome:
    proc = subprocess.run([sys.executable, "-m", "dsqc", *args], capture_output=True, text=True,
                          timeout=120, cwd=tmp, **kwargs)  # type: ignore[call-overload]
    return Outcome(proc.returncode, proc.stdout, proc.stderr)


def check_case(case: Case, tmp: Path) -> None:
    with case.environment(tmp) if case.environment else contextlib.nullcontext():
        _check_case(case, tmp)


def _check_case(case: Case, tmp: Path) -> None:
    out = tmp / case.out
    args = case.make(tmp)
    for name, text in case.before.items():
        out.mkdir(exist_ok=True)
        (out / name).write_text(text)
    before = _snapshot(out)
    outcome = (case.run or run_in_process)(tmp, [*args, "-o", str(out)])
    assert "Traceback" not in outcome.stderr, outcome.stderr
    if case.refuse is not None:
        expected = case.refuse.replace("{tmp}", str(tmp))
        assert outcome.lines == [expected], f"stderr:\n{outcome.stderr}\nwanted:\n{expected}"
        assert outcome.rc == case.exit_code, outcome
        assert _snapshot(out) == before, f"{out} changed"
        leftovers = sorted(p.name for p in out.parent.glob(f".{out.name}.dsqc-*"))
        assert not leftovers, f"staging left behind: {leftovers}"
        return
    assert case.built is not None, f"case {case.id} states no outcome"
    _check_built(case.built, outcome, out)


def _check_built(built: Built, outcome: Outcome, out: Path) -> None:
    assert outcome.rc == 0, outcome.stderr
    wanted = [w.replace("{tmp}", str(out.parent)) for w in built.warnings]
    assert len(outcome.lines) == len(wanted), outcome.stderr
    for line, want in zip(outcome.lines, wanted, strict=True):
        assert line.startswith(want[:-1]) if want.endswith("…") else line == want, outcome.stderr
    for name in built.artifacts:
        assert (out / name).is_file(), f"{name} missing; have {sorted(p.name for p in out.rglob('*'))}"
    report = json.loads((out / "report.json").read_text())
    assert report["failed"] is None
    plan = report.get("plan") or {"nodes": {}}
    int8 = sorted(n for n, p in plan["nodes"].items() if p["precision"] == "int8")
    assert set(built.int8_nodes) <= set(int8), f"int8 nodes {int8}, wanted {built.int8_nodes}"
    fp32 = {n for n, p in plan["nodes"].items() if p["precision"] == "fp32"}
    assert set(built.fp32_nodes) <= fp32, f"fp32 nodes {sorted(fp32)}, wanted {built.fp32_nodes}"
    verification = report["metrics"].get("verification")
    if verification is not None:
        sqnrs = {k: float(v["sqnr_db"]) for k, v in verification["outputs"].items()
                 if k not in built.exact_outputs}
        assert sqnrs and all(built.min_sqnr <= s < 200 for s in sqnrs.values()), sqnrs
        exact = [float(verification["outputs"][k]["sqnr_db"]) for k in built.exact_outputs]
        assert exact == [float("inf")] * len(exact), exact
    if built.check is not None:
        built.check(out)


def _snapshot(folder: Path) -> dict[str, bytes] | None:
    if not folder.exists():
        return None
    if not folder.is_dir():
        return {"": folder.read_bytes()}
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}
