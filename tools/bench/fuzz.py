"""``python -m tools.bench.fuzz [--examples N] [--random]``: the property-based fuzzing of ``tests/fuzz``,
longer than the fixed-seed default of CI; prints the graph counts and appends the run to FUZZ.md."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
LOG = REPO / "tools" / "bench" / "FUZZ.md"
HEADER = ("# Fuzzing runs (`python -m tools.bench.fuzz`)\n\n"
          "| date (UTC) | commit | examples per property | seed | graphs run | result | wall |\n"
          "|---|---|---:|---|---|---|---:|\n")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=200, help="examples per property (CI: 6-60)")
    parser.add_argument("--random", action="store_true", help="fresh random graphs instead of the fixed seed")
    args = parser.parse_args(argv)
    env = {**os.environ, "DSQC_FUZZ_EXAMPLES": str(args.examples),
           "DSQC_FUZZ_RANDOM": "1" if args.random else "0"}
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/fuzz"],
                          cwd=REPO, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    print(proc.stdout[-4000:], proc.stderr[-2000:], sep="\n")
    lines = proc.stdout.splitlines()
    counts = next((line.removeprefix("fuzz: ") for line in lines if line.startswith("fuzz: ")), "none")
    result = next((line.strip("= ") for line in reversed(lines) if " in " in line and
                   ("passed" in line or "failed" in line)), f"exit {proc.returncode}")
    commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                            text=True).stdout.strip()
    row = (f"| {time.strftime('%Y-%m-%d %H:%M', time.gmtime())} | {commit} | {args.examples} | "
           f"{'random' if args.random else 'fixed'} | {counts} | {result} | {wall:.0f} s |\n")
    LOG.write_text((LOG.read_text() if LOG.exists() else HEADER) + row)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main())
