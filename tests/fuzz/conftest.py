"""Fuzzing settings: a fixed seed, a small default count, DSQC_FUZZ_EXAMPLES for a longer run
(``python -m tools.bench.fuzz``), DSQC_FUZZ_RANDOM=1 for fresh graphs instead of the fixed seed.

The number of graphs each property saw is printed at the end of the session.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import HealthCheck, Phase, settings

RAN: Counter[str] = Counter()  # graphs per property and outcome
SEEN: Counter[str] = Counter()  # details (a check that did not apply, and why)


def fuzz_settings(default: int, shrink: bool = True) -> Callable[[Any], Any]:
    """``derandomize``: the same graphs on every run; ``DSQC_FUZZ_EXAMPLES=500`` runs 500 per property.

    ``shrink=False`` for properties marked xfail: the first failure is enough, shrinking it costs time.
    """
    examples = int(os.environ.get("DSQC_FUZZ_EXAMPLES", default))
    phases = tuple(Phase) if shrink else (Phase.explicit, Phase.reuse, Phase.generate)
    fixed = os.environ.get("DSQC_FUZZ_RANDOM", "0") != "1"
    return settings(max_examples=examples, derandomize=fixed, deadline=None, database=None, phases=phases,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                           HealthCheck.filter_too_much],
                    print_blob=True)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    if RAN:
        detail = ", ".join(f"{name} {count}" for name, count in sorted(RAN.items()))
        terminalreporter.write_line(f"fuzz: {sum(RAN.values())} random graphs run ({detail})")
    if SEEN:
        terminalreporter.write_line("fuzz details: " + ", ".join(f"{k} {v}" for k, v in sorted(SEEN.items())))
