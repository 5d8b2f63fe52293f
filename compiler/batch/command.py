"""``dsqc batch FLEET.toml``: the subcommand's arguments and its progress lines (one per finished item,
plain text, so a CI log or ``| tee`` reads the same as a terminal). Exit 0 all ok, 1 some failed, 2 bad
manifest."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from dsqc.errors import DsqcError


def add_batch_parser(sub: argparse._SubParsersAction, add_verbosity: Any) -> None:
    p = sub.add_parser("batch", help="build a fleet: models × targets × recipes × calibration sets")
    add_verbosity(p, argparse.SUPPRESS)
    p.add_argument("manifest", type=Path, help="fleet TOML (schema: README, dsqc/batch/manifest.py)")
    p.add_argument("-o", "--out", type=Path, help="output folder (default: the manifest's out)")
    run = p.add_mutually_exclusive_group()
    run.add_argument("-j", "--jobs", type=int, default=1,
                     help="items built at once on this machine (default 1)")
    run.add_argument("--ray", metavar="auto|ADDRESS|local",
                     help="run the items as Ray tasks: auto = the running cluster (ray start), ADDRESS = "
                          "ray://host:10001 or host:6379, local = start a Ray on this machine")
    p.add_argument("--force", action="store_true", help="rebuild items whose finished bundle matches")
    p.set_defaults(func=cmd_batch)


def cmd_batch(args: argparse.Namespace) -> int:
    from dsqc.batch.manifest import load_fleet
    from dsqc.batch.runner import BATCH_JSON, INDEX_HTML, Executor, LocalExecutor, RayExecutor, run_batch

    if args.jobs < 1:
        raise DsqcError(f"--jobs {args.jobs}: give at least 1")
    fleet = load_fleet(args.manifest, args.out)
    executor: Executor = RayExecutor(args.ray) if args.ray else LocalExecutor(args.jobs)
    if isinstance(executor, RayExecutor):
        try:
            import ray  # noqa: F401
        except ImportError:
            raise DsqcError("--ray needs Ray: pip install 'dsqc[ray]'") from None
        executor.connect()
    width = max(len(item.id) for item in fleet.items)
    quiet = getattr(args, "verbose", 0) - getattr(args, "quiet", 0) < 0  # -q: the failures only

    def say(line: str) -> None:
        if not quiet:
            print(line, flush=True)

    def progress(record: dict[str, Any], done: int, total: int) -> None:
        say(format_progress(record, done, total, width))

    say(f"dsqc: batch of {len(fleet.items)} items from {args.manifest} into {fleet.out} on {executor.name}")

    try:
        result = run_batch(fleet, executor, force=args.force, on_done=progress)
    except KeyboardInterrupt as exc:  # finished items are installed and in batch.json: a rerun resumes
        print(f"dsqc: batch interrupted; finished items are kept in {fleet.out} and a rerun skips them",
              file=sys.stderr)
        return int(getattr(exc, "exit_code", 130))
    reused = sum(1 for r in result.records if r.get("cached"))
    ok = len(result.records) - len(result.failed)
    say(f"dsqc: batch: {ok} ok ({reused} reused), {len(result.failed)} failed in {result.seconds:.1f} s; "
        f"wrote {fleet.out / BATCH_JSON}, {fleet.out / INDEX_HTML}")
    for record in result.failed:
        print(f"dsqc: failed: {record['id']}: {record['status']}: {record['reason']}", file=sys.stderr)
    return 1 if result.failed else 0


def format_progress(record: dict[str, Any], done: int, total: int, width: int = 30) -> str:
    digits = len(str(total))
    head = f"[{done:>{digits}}/{total}] "
    if record.get("cached"):
        return f"{head}{'reused':8s} {record['id']:{width}s}  (inputs unchanged since the finished build)"
    seconds = record.get("seconds")
    took = f"{seconds:7.1f} s" if seconds is not None else " " * 9
    if record["status"] != "ok":
        return f"{head}{record['status'].upper():8s} {record['id']:{width}s} {took}  {record['reason']}"
    summary = record.get("summary") or {}
    sqnr = summary.get("min_sqnr_db")
    detail = f"min SQNR {sqnr:.2f} dB" if sqnr is not None else ""
    if summary.get("verdict") not in (None, "ok"):
        detail += f", verdict {summary['verdict']}"
    return f"{head}{'ok':8s} {record['id']:{width}s} {took}  {detail}, peak {record['peak_rss_mb']:.0f} MB"
