"""Run a fleet: skip finished items, build the rest on an executor, install bundles, keep ``batch.json``.

Two executors behind one interface (``run(items) -> iterator of Outcome`` in completion order):
``LocalExecutor`` (``--jobs N`` threads, each supervising one ``dsqc build`` child process) and
``RayExecutor`` (``--ray``: one Ray task per item asking for the item's CPUs and memory; Ray schedules,
dsqc does not). Both call ``worker.run_item``, so an item builds the same way on either.

``batch.json`` is rewritten (atomically) after every finished item, so an interrupted batch resumes.
"""

from __future__ import annotations

import concurrent.futures as cf
import json
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from dsqc import __version__
from dsqc.batch.fingerprint import input_hash, tree_hashes
from dsqc.batch.manifest import Fleet, Item
from dsqc.batch.summary import summarize_bundle
from dsqc.batch.worker import Inputs, Outcome, cancel_all, run_item, unpack
from dsqc.errors import DsqcError

log = logging.getLogger(__name__)
BATCH_JSON = "batch.json"
INDEX_HTML = "index.html"
WORK_DIR = ".work"
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


class Executor(Protocol):
    name: str

    def run(self, items: list[Item], scratch: Path) -> Iterator[Outcome]: ...


class LocalExecutor:
    """``jobs`` items at a time on this machine."""

    def __init__(self, jobs: int = 1) -> None:
        self.jobs = jobs
        self.name = f"local (--jobs {jobs})"

    def run(self, items: list[Item], scratch: Path) -> Iterator[Outcome]:
        pool = cf.ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="dsqc-batch")
        futures: list[cf.Future[Outcome]] = []
        try:
            futures = [pool.submit(run_item, item, scratch) for item in items]
            for future in cf.as_completed(futures):
                yield future.result()
        finally:
            for future in futures:
                future.cancel()
            cancel_all()
            pool.shutdown(wait=True)


class RayExecutor:
    """One Ray task per item on the cluster at ``address`` (``auto``: the running one; ``local``: start one
    here). The item's input files travel with the task; the bundle comes back as bytes."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.name = f"ray ({address})"

    def connect(self) -> None:
        """Join the cluster (or start the local one); a missing cluster is one ``DsqcError`` line."""
        import ray

        if ray.is_initialized():
            return
        try:
            ray.init(address=None if self.address == "local" else self.address,
                     log_to_driver=False, logging_level=logging.WARNING)
        except (ConnectionError, ValueError, RuntimeError) as exc:
            raise DsqcError(f"--ray {self.address}: cannot join a Ray cluster ({_last_line(exc)}); start one "
                            "with 'ray start --head', pass its address, or use --ray local") from None

    def run(self, items: list[Item], scratch: Path) -> Iterator[Outcome]:
        import ray

        self.connect()
        task = ray.remote(_ray_task)
        shipped: dict[Path, Any] = {}

        def ref(path: Path) -> Any:  # each input file enters the object store once
            if path not in shipped:
                shipped[path] = ray.put((path.name, path.read_bytes()))
            return shipped[path]

        nodes = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        pending = {}
        for item in items:
            unplaceable = _unplaceable(item, nodes)
            if unplaceable:  # Ray would queue it forever
                yield Outcome(item.id, "failed", unplaceable, 0.0, 0.0, None)
                continue
            files = {"model": ref(item.model)}
            if item.recipe is not None:
                files["recipe"] = ref(item.recipe)
            if item.calib.path is not None and item.calib.path.is_file():
                files["calib"] = ref(item.calib.path)
            options = task.options(num_cpus=item.limits.cpus, memory=item.limits.memory_mb * 2**20,
                                   max_retries=0, name=f"dsqc {item.id}")
            pending[options.remote(item, files)] = item
        try:
            while pending:
                done, _ = ray.wait(list(pending), num_returns=1)
                item = pending.pop(done[0])
                try:
                    yield ray.get(done[0])
                except Exception as exc:  # the task itself died (worker lost, node gone)
                    yield Outcome(item.id, "crashed", f"Ray task failed: {_last_line(exc)}", 0.0, 0.0, None)
        finally:
            for left in pending:
                ray.cancel(left, force=True)


def _unplaceable(item: Item, nodes: list[dict[str, float]]) -> str:
    """Why no node of the cluster can ever run ``item`` ("" when one can)."""
    need = {"CPU": float(item.limits.cpus), "memory": float(item.limits.memory_mb * 2**20)}
    if any(all(node.get(k, 0.0) >= v for k, v in need.items()) for node in nodes):
        return ""
    most_cpu = max((n.get("CPU", 0.0) for n in nodes), default=0.0)
    most_mb = max((n.get("memory", 0.0) for n in nodes), default=0.0) / 2**20
    return (f"no Ray node offers {item.limits.cpus} CPU and {item.limits.memory_mb} MB (largest: "
            f"{most_cpu:g} CPU, {most_mb:.0f} MB); lower cpus/memory_mb or add a larger node")


def _ray_task(item: Item, refs: dict[str, Any]) -> Outcome:
    """Runs on a Ray worker: fetch the input files (object refs nested in a dict are not resolved by Ray)
    and build like the local executor does."""
    import ray

    return run_item(item, None, Inputs({role: ray.get(ref) for role, ref in refs.items()}))


def _last_line(exc: BaseException) -> str:
    lines = [_ANSI.sub("", line).strip() for line in str(exc).splitlines()]
    return next((line for line in reversed(lines) if line), type(exc).__name__)


@dataclass
class BatchResult:
    records: list[dict[str, Any]]
    seconds: float

    @property
    def failed(self) -> list[dict[str, Any]]:
        return [r for r in self.records if r["status"] != "ok"]


Progress = Callable[[dict[str, Any], int, int], None]


def run_batch(fleet: Fleet, executor: Executor, force: bool = False,
              on_done: Progress | None = None) -> BatchResult:
    """Build every item of ``fleet`` not already finished with the same input hash."""
    from dsqc.batch.index_html import write_index

    start = time.monotonic()
    fleet.out.mkdir(parents=True, exist_ok=True)
    previous = _previous_records(fleet.out)
    digests: dict[Path, str] = {}
    records: dict[str, dict[str, Any]] = {}
    todo: list[Item] = []
    for item in fleet.items:
        try:
            item_hash = input_hash(item, digests)
        except OSError as exc:
            records[item.id] = _record(item, "", Outcome(item.id, "failed", f"cannot read an input: {exc}",
                                                         0.0, 0.0, None))
            continue
        old = previous.get(item.id)
        if not force and old and old.get("status") == "ok" and old.get("input_hash") == item_hash \
                and (fleet.out / item.id / "report.json").is_file():
            records[item.id] = {**old, "cached": True}
        else:
            records[item.id] = _record(item, item_hash, None)
            todo.append(item)
    total, done = len(fleet.items), 0
    for record in (r for r in records.values() if r.get("cached") or r["status"] == "failed"):
        done += 1
        if on_done:
            on_done(record, done, total)
    scratch = fleet.out / WORK_DIR
    scratch.mkdir(exist_ok=True)
    by_id = {item.id: item for item in todo}
    try:
        for outcome in executor.run(todo, scratch):
            item = by_id[outcome.item_id]
            records[item.id] = _finish(fleet.out, item, records[item.id]["input_hash"], outcome)
            _write_json(fleet, executor, records, time.monotonic() - start)
            done += 1
            if on_done:
                on_done(records[item.id], done, total)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    seconds = time.monotonic() - start
    _write_json(fleet, executor, records, seconds)
    ordered = [records[item.id] for item in fleet.items]
    write_index(fleet.out / INDEX_HTML, ordered, fleet.manifest.name, executor.name, seconds)
    return BatchResult(ordered, seconds)


def _previous_records(out: Path) -> dict[str, dict[str, Any]]:
    try:
        body = json.loads((out / BATCH_JSON).read_text(encoding="utf-8"))
        return {r["id"]: r for r in body.get("items", []) if isinstance(r, dict) and "id" in r}
    except (OSError, ValueError, TypeError, AttributeError):
        return {}


def _record(item: Item, item_hash: str, outcome: Outcome | None) -> dict[str, Any]:
    return {
        "id": item.id, "model": item.model_name, "model_path": str(item.model), "target": item.target,
        "recipe": str(item.recipe) if item.recipe else None, "calib": item.calib.spec,
        "input_hash": item_hash, "status": outcome.status if outcome else "pending",
        "reason": outcome.reason if outcome else "", "seconds": outcome.seconds if outcome else None,
        "peak_rss_mb": outcome.peak_rss_mb if outcome else None,
        "exit_code": outcome.exit_code if outcome else None, "host": outcome.host if outcome else None,
        "limits": {"timeout_s": item.limits.timeout_s, "memory_mb": item.limits.memory_mb,
                   "cpus": item.limits.cpus},
        "cached": False, "bundle": None, "summary": None, "artifacts": {},
    }


def _finish(out: Path, item: Item, item_hash: str, outcome: Outcome) -> dict[str, Any]:
    """Replace the item's folder with what the build wrote (or remove a stale one) and record it."""
    record = _record(item, item_hash, outcome)
    target = out / item.id
    if outcome.bundle is not None:
        staging = Path(tempfile.mkdtemp(prefix=".install-", dir=out / WORK_DIR)) / "bundle"
        unpack(outcome.bundle, staging)
        _replace(staging, target)
        record["bundle"] = item.id
        record["artifacts"] = tree_hashes(target)
        record["summary"] = summarize_bundle(target)
    elif target.exists():
        shutil.rmtree(target)  # a folder from an earlier run does not belong to these inputs
    return record


def _replace(new: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    old = target.with_name(f".{target.name}.old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(new, target)
    shutil.rmtree(old, ignore_errors=True)


def _write_json(fleet: Fleet, executor: Executor, records: dict[str, dict[str, Any]], seconds: float) -> None:
    ordered = [records[item.id] for item in fleet.items]
    counts: dict[str, int] = {}
    for r in ordered:
        counts[r["status"]] = counts.get(r["status"], 0) + 1
    body = {"dsqc_version": __version__, "manifest": str(fleet.manifest.resolve()), "executor": executor.name,
            "seconds": round(seconds, 3), "counts": counts,
            "cached": sum(1 for r in ordered if r.get("cached")), "items": ordered}
    path = fleet.out / BATCH_JSON
    tmp = path.with_name(f".{BATCH_JSON}.tmp")
    tmp.write_text(json.dumps(body, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
