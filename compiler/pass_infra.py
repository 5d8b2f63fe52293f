"""Pass infrastructure: ``Pass`` → ``PassResult``; every pass run goes through the active ``PassContext``.

A pass is called like a function, ``SomePass(...)(model)``, wherever it is: in the normalization
pipeline, in a booster, in the quantizer, in a backend. The call runs through the ``PassContext``
that is active at that moment (``with context.active():``; the build driver activates one for the
whole build), so ``--dump-ir``, ``--check-each-pass`` and the ``-v`` timings see every pass run.
Composite passes (``FixedPoint``, ``PassManager``) run their members through the same context.
"""

from __future__ import annotations

import contextvars
import logging
import time
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import onnx
import onnx_graphsurgeon as gs

from dsqc.errors import PassError
from dsqc.ir import Model

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class PassResult:
    model: Model
    modified: bool


class Pass(ABC):
    """One graph transformation. Subclasses implement ``call``; the context checks the contract.

    ``cleanup_after``: when the pass changed the graph, the context removes what it left dangling
    and sorts the graph once (``graph.cleanup().toposort()``), so the pass need not.
    ``composite``: the pass runs other passes; instruments see those, not the group itself.
    """

    name: str = ""
    cleanup_after: ClassVar[bool] = False
    composite: ClassVar[bool] = False

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
        return current_context().run(self, model)


class Instrument(Protocol):
    def after_pass(self, pass_: Pass, result: PassResult, seconds: float) -> None: ...


@dataclass
class TimingInstrument:
    """Accumulates wall time per pass name (the report's ``passes_ms``)."""

    seconds: dict[str, float] = field(default_factory=dict)

    def after_pass(self, pass_: Pass, result: PassResult, seconds: float) -> None:
        self.seconds[pass_.name] = self.seconds.get(pass_.name, 0.0) + seconds


@dataclass
class DumpIRInstrument:
    """Writes the graph after every pass run that changed it: ``DIR/NNN_<pass>.onnx``, numbered in
    run order across everything the context runs."""

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


@dataclass(frozen=True)
class PassContext:
    """What every pass run inherits: the instruments that see it and the level its timing line is
    logged at (INFO: shown with ``-v``). Activate with ``with context.active():``."""

    instruments: tuple[Instrument, ...] = ()
    log_level: int = logging.INFO

    @classmethod
    def for_build(cls, dump_ir: Path | None = None, check_each_pass: bool = False) -> PassContext:
        """Timing always; ``onnx.checker`` after each pass and the graph dump as asked."""
        instruments: list[Instrument] = [TimingInstrument()]
        if check_each_pass:
            instruments.append(CheckInstrument())
        if dump_ir is not None:
            instruments.append(DumpIRInstrument(dump_ir))
        return cls(tuple(instruments))

    @property
    def timing(self) -> TimingInstrument | None:
        return next((i for i in self.instruments if isinstance(i, TimingInstrument)), None)

    def with_instruments(self, extra: Sequence[Instrument]) -> PassContext:
        """This context plus ``extra`` (the same instrument objects: dump numbering continues)."""
        return PassContext((*self.instruments, *extra), self.log_level)

    def trial(self) -> PassContext:
        """This context without its graph dump: for trial plans a build measures and throws away
        (``range_select``'s candidates), so ``--dump-ir`` shows the passes of the build's own plan."""
        return PassContext(tuple(i for i in self.instruments if not isinstance(i, DumpIRInstrument)),
                           self.log_level)

    @contextmanager
    def active(self) -> Iterator[PassContext]:
        """Every pass called inside the block (at any depth) runs through this context."""
        token = _CURRENT.set(self)
        try:
            yield self
        finally:
            _CURRENT.reset(token)

    def run(self, pass_: Pass, model: Model) -> PassResult:
        """One pass run: precondition, ``call``, result type, clean-up, postcondition, instruments."""
        pass_.requires(model)
        start = time.perf_counter()
        result = pass_.call(model)
        if not isinstance(result, PassResult):
            raise pass_.fail(f"returned {type(result).__name__}, expected PassResult")
        if result.modified and pass_.cleanup_after:
            result.model.graph.cleanup(remove_unused_graph_inputs=False).toposort()
        elapsed = time.perf_counter() - start
        pass_.ensures(result.model)
        if pass_.composite:
            return result
        log.log(self.log_level, "pass %-28s %7.2f ms  %s", pass_.name, elapsed * 1e3,
                "modified" if result.modified else "-")
        for instrument in self.instruments:
            instrument.after_pass(pass_, result, elapsed)
        return result


_CURRENT: contextvars.ContextVar[PassContext | None] = contextvars.ContextVar("dsqc_passes", default=None)
_BARE = PassContext()  # outside any ``active()`` block: no instruments, timing lines still logged


def current_context() -> PassContext:
    """The context pass runs inherit here: the innermost ``active()`` one, else one without instruments."""
    return _CURRENT.get() or _BARE


class FixedPoint(Pass):
    """Run ``passes`` in order, again and again, until none of them changes the model."""

    composite = True

    def __init__(self, passes: Sequence[Pass], max_iterations: int = 8, name: str = "FixedPoint") -> None:
        self.passes = list(passes)
        self.max_iterations = max_iterations
        self.name = name

    def call(self, model: Model) -> PassResult:
        any_change = False
        for _ in range(self.max_iterations):
            round_change = False
            for pass_ in self.passes:
                result = pass_(model)
                model, round_change = result.model, round_change | result.modified
            any_change |= round_change
            if not round_change:
                return PassResult(model, any_change)
        log.warning("%s did not converge in %d rounds", self.name, self.max_iterations)
        return PassResult(model, any_change)


Step = Pass


class PassManager(Pass):
    """Runs ``steps`` once, in order, through the active context (plus ``instruments``, if given)."""

    composite = True

    def __init__(self, steps: Sequence[Pass], instruments: Sequence[Instrument] = ()) -> None:
        self.steps = list(steps)
        self.instruments = tuple(instruments)

    def call(self, model: Model) -> PassResult:
        modified = False
        for step in self.steps:
            result = step(model)
            model, modified = result.model, modified | result.modified
        return PassResult(model, modified)

    def run(self, model: Model) -> PassResult:
        if not self.instruments:
            return self(model)
        with current_context().with_instruments(self.instruments).active():
            return self(model)


class NodeRewritePass(Pass):
    """A pass that rewrites single nodes: ``op_types`` names the candidates, ``refusal`` says why a
    candidate is left alone (``None``: rewrite it), ``rewrite`` changes the graph around it.

    The base visits the candidates in graph order (a snapshot taken before the first rewrite; nodes
    detached by an earlier rewrite are skipped), logs each refusal at DEBUG except those listed in
    ``quiet_refusals`` (plain pattern misses), and with ``repeat`` rewrites the same node again until
    it refuses (chains that shrink by one node per rewrite). Rewrites may leave nodes and tensors
    dangling: the context cleans up and sorts once after the pass changed the graph.
    """

    op_types: ClassVar[frozenset[str]] = frozenset()
    quiet_refusals: ClassVar[frozenset[str]] = frozenset()
    repeat: ClassVar[bool] = False
    cleanup_after = True

    @abstractmethod
    def refusal(self, node: gs.Node, model: Model) -> str | None:
        """Why ``node`` is not rewritten, or ``None`` when it is. Must not change the graph."""

    @abstractmethod
    def rewrite(self, node: gs.Node, model: Model) -> None:
        """Rewrite ``node`` (``refusal`` just returned ``None`` for it)."""

    def call(self, model: Model) -> PassResult:
        rewrites = 0
        for node in [n for n in model.graph.nodes if n.op in self.op_types]:
            while node.inputs and node.outputs:
                reason = self.refusal(node, model)
                if reason is not None:
                    if reason not in self.quiet_refusals:
                        log.debug("%s: skip %s (%s): %s", self.name, node.name, node.op, reason)
                    break
                self.rewrite(node, model)
                rewrites += 1
                if not self.repeat:
                    break
        if rewrites:
            log.debug("%s: %d rewrites", self.name, rewrites)
        return PassResult(model, rewrites > 0)
