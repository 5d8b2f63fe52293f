"""The bad-input corpus: one table-driven test over every case (see README.md in this folder)."""

from __future__ import annotations

from pathlib import Path

import pytest

from . import cases_data, cases_env, cases_graph, cases_model, cases_recipe
from ._corpus import Case, check_case

CASES: list[Case] = [*cases_model.CASES, *cases_graph.CASES, *cases_data.CASES,
                     *cases_recipe.CASES, *cases_env.CASES]


def _param(case: Case) -> object:
    marks = [pytest.mark.xfail(strict=True, reason=case.xfail)] if case.xfail else []
    return pytest.param(case, id=f"{case.category}:{case.id}", marks=marks)


def test_ids_unique() -> None:
    ids = [case.id for case in CASES]
    assert len(ids) == len(set(ids))


@pytest.mark.parametrize("case", [_param(c) for c in CASES])
def test_corpus(case: Case, tmp_path: Path) -> None:
    check_case(case, tmp_path)
