"""Property: every FP32 normalization pass keeps the outputs of random graphs (≤ 1e-5 relative)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from hypothesis import given

from dsqc.driver.pipeline import normalization_steps, normalize
from dsqc.ir import Model
from dsqc.pass_infra import Pass, PassManager, PassResult
from tests.passes._graphs import TOL, rel_error, run

from ._graphs import Case, graphs
from .conftest import RAN, fuzz_settings


@dataclass
class CompareEachPass:
    """Instrument: after every pass that changed the graph, ORT outputs must match the original's."""

    feeds: dict[str, np.ndarray]
    reference: list[np.ndarray]
    checked: list[str] = field(default_factory=list)

    def after_pass(self, pass_: Pass, result: PassResult, seconds: float) -> None:
        if not result.modified:
            return
        outputs = run(result.model.copy().to_proto(), self.feeds)
        _assert_close(self.reference, outputs, f"after {pass_.name}")
        self.checked.append(pass_.name)


def _assert_close(reference: list[np.ndarray], outputs: list[np.ndarray], where: str) -> None:
    assert len(outputs) == len(reference), where
    for i, (ref, got) in enumerate(zip(reference, outputs, strict=True)):
        assert got.shape == ref.shape, f"{where}: output {i} shape {got.shape} != {ref.shape}"
        assert rel_error(ref, got) <= TOL, f"{where}: output {i} off by {rel_error(ref, got):.3g} relative"


@fuzz_settings(default=60)
@given(graphs())
def test_every_pass_keeps_outputs(case: Case) -> None:
    RAN["normalize"] += 1
    feeds = case.feeds(3)
    reference = run(case.model, feeds)
    check = CompareEachPass(feeds, reference)
    PassManager(normalization_steps(), [check]).run(Model.from_proto(case.model))
    final = normalize(case.model).model  # the pipeline's own entry, re-validated by prepare()
    _assert_close(reference, run(final, feeds), "after normalize()")
