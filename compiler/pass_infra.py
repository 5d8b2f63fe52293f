"""Pass infrastructure: ``Pass`` → ``PassResult``, fixed-point groups, a manager with instruments."""

from __future__ import annotations

import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import onnx

from dsqc.errors import PassError
from dsqc.ir import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    model: Model
    modified: bool


class Pass(ABC):
    """One graph transformation. Subclasses implement ``call``; the base checks the contract."""

    name: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: object) -> None:
        super().__init_subclass__(**kwargs)
        if not cls.__dict__.get("name"):
            cls.name = cls.__name__

    def requires(self, model: Model) -> None:  # noqa: B027 - optional hook
        """Raise through ``self.fail`` when the input breaks this pass's precondition."""

    def ensures(self, model: Model) -> None:  # noqa: B027 - optional hook
        """Raise through ``self.fail`` when the output breaks this pass's postcondition."""

    @abstractmethod
    def call(self, model: Model) -> PassResult:
        """Transform ``model`` (in place) and say whether anything changed."""

    def fail(self, message: str) -> PassError:
        return PassError(f"pass {self.name}: {message}")

    def __call__(self, model: Model) -> PassResult:
        self.requires(model)
        result = self.call(model)
        if not isinstance(result, PassResult):
            raise self.fail(f"returned {type(result).__name__}, expected PassResult")
        self.ensures(result.model)
        return result


@dataclass
class FixedPoint:
    """Run ``passes`` in order, again and again, until none of them changes the model."""

    passes: Sequence[Pass]
    max_iterations: int = 8
    name: str = "FixedPoint"


Step = Pass | FixedPoint


class Instrument(Protocol):
    def after_pass(self, pass_: Pass, result: PassResult, seconds: float) -> None: ...


@dataclass
class TimingInstrument:
    """Accumulates wall time per pass; logged at INFO (``-v``)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def after_pass(self, pass_: Pass, result: PassResult, seconds: float) -> None:
        self.seconds[pass_.name] = self.seconds.get(pass_.name, 0.0) + seconds
        log.info("pass %-28s %7.2f ms  %s", pass_.name, seconds * 1e3,
                 "modified" if result.modified else "-")


@dataclass
class DumpIRInstrument:
    """Writes the graph after every pass that changed it: ``DIR/NNN_<pass>.onnx``."""

    folder: Path
    count: int = 0

    def after_pass(self, pass_: Pass, result: PassResult, seconds: float) -> None:
        if not result.modified:
            return
        self.folder.mkdir(parents=True, exist_ok=True)
        self.count += 1
        onnx.save(result.model.copy().to_proto(), self.folder / f"{self.count:03d}_{pass_.name}.onnx")


@dataclass
class CheckInstrument:
    """Runs ``onnx.checker`` after every pass; a failure names the pass that broke the graph."""

    def after_pass(self, pass_: Pass, result: PassResult, seconds: float) -> None:
        try:
            onnx.checker.check_model(result.model.copy().to_proto())
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0]
            raise pass_.fail(f"left an invalid graph: {first}") from exc


@dataclass
class PassManager:
    """Runs steps in order; ``FixedPoint`` groups repeat until nothing changes."""

    steps: Sequence[Step]
    instruments: Sequence[Instrument] = ()

    def run(self, model: Model) -> PassResult:
        modified = False
        for step in self.steps:
            if isinstance(step, FixedPoint):
                model, changed = self._run_fixed_point(step, model)
            else:
                model, changed = self._run_one(step, model)
            modified |= changed
        return PassResult(model, modified)

    def _run_fixed_point(self, group: FixedPoint, model: Model) -> tuple[Model, bool]:
        any_change = False
        for _ in range(group.max_iterations):
            round_change = False
            for pass_ in group.passes:
                model, changed = self._run_one(pass_, model)
                round_change |= changed
            any_change |= round_change
            if not round_change:
                return model, any_change
        log.warning("%s did not converge in %d rounds", group.name, group.max_iterations)
        return model, any_change

    def _run_one(self, pass_: Pass, model: Model) -> tuple[Model, bool]:
        start = time.perf_counter()
        result = pass_(model)
        elapsed = time.perf_counter() - start
        for instrument in self.instruments:
            instrument.after_pass(pass_, result, elapsed)
        return result.model, result.modified
