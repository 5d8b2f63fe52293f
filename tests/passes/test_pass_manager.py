"""The pass infrastructure: order, fixed points, the contract, instruments, the pass context that every
pass run inherits wherever it is called, clean-up after a change, and ``--check-each-pass``."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest
from _graphs import TOL, init, make_model, randn, rel_error, run, value
from onnx import helper

from dsqc.errors import PassError
from dsqc.ir import Model
from dsqc.pass_infra import (
    DumpIRInstrument,
    FixedPoint,
    NodeRewritePass,
    Pass,
    PassContext,
    PassManager,
    PassResult,
    current_context,
)


def _relu_chain() -> onnx.ModelProto:
    """x → Relu → Relu → Mul(2) → y: two Relus a rewrite can drop (the second one is redundant)."""
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu1"),
             helper.make_node("Relu", ["a"], ["b"], name="relu2"),
             helper.make_node("Mul", ["b", "two"], ["y"], name="mul")]
    return make_model(nodes, [value("x", [2, 3])], [value("y", [2, 3])],
                      [init("two", np.full((1,), 2.0, np.float32))])


class _Record(Pass):
    """Appends its label to ``log`` and says it changed the model ``changes`` times."""

    def __init__(self, label: str, log: list[str], changes: int = 0) -> None:
        self.label, self.log, self.changes = label, log, changes

    def call(self, model: Model) -> PassResult:
        self.log.append(self.label)
        self.changes -= 1
        return PassResult(model, self.changes >= 0)


class _Seen:
    """An instrument that records (pass name, modified) of every run it sees."""

    def __init__(self) -> None:
        self.runs: list[tuple[str, bool]] = []

    def after_pass(self, pass_: Pass, result: PassResult, seconds: float) -> None:
        assert seconds >= 0.0
        self.runs.append((pass_.name, result.modified))


class DropDoubleRelu(NodeRewritePass):
    """``Relu(Relu(x))`` → ``Relu(x)``: readers of the outer Relu read the inner one."""

    op_types = frozenset({"Relu"})
    quiet_refusals = frozenset({"input is not a Relu"})

    def refusal(self, node: gs.Node, model: Model) -> str | None:
        inner = node.inputs[0].inputs[0] if node.inputs[0].inputs else None
        if inner is None or inner.op != "Relu":
            return "input is not a Relu"
        return "output is a graph output" if node.outputs[0] in model.graph.outputs else None

    def rewrite(self, node: gs.Node, model: Model) -> None:
        out, kept = node.outputs[0], node.inputs[0]
        for reader in list(out.outputs):
            reader.inputs[reader.inputs.index(out)] = kept
        node.inputs.clear()
        node.outputs.clear()


class _Breaks(Pass):
    """Adds a node that reads a tensor nothing produces: ``onnx.checker`` must reject the graph."""

    def call(self, model: Model) -> PassResult:
        ghost = gs.Variable("ghost", np.float32, [2, 3])
        out = gs.Variable("ghost_out", np.float32, [2, 3])
        model.graph.nodes.insert(0, gs.Node("Relu", "reads_ghost", inputs=[ghost], outputs=[out]))
        model.graph.outputs.append(out)
        return PassResult(model, True)


def test_steps_run_in_order_and_groups_repeat_until_nothing_changes() -> None:
    order: list[str] = []
    group = FixedPoint([_Record("a", order, changes=2), _Record("b", order)], name="group")
    result = PassManager([_Record("first", order), group, _Record("last", order)]).run(
        Model.from_proto(_relu_chain()))
    # the group runs until a round changes nothing: rounds 1 and 2 change (a), round 3 does not
    assert order == ["first", "a", "b", "a", "b", "a", "b", "last"]
    assert result.modified


def test_fixed_point_gives_up_after_max_iterations(caplog: pytest.LogCaptureFixture) -> None:
    order: list[str] = []
    with caplog.at_level(logging.WARNING, logger="dsqc.pass_infra"):
        result = FixedPoint([_Record("x", order, changes=100)], max_iterations=3, name="stuck")(
            Model.from_proto(_relu_chain()))
    assert order == ["x"] * 3 and result.modified
    assert "stuck did not converge in 3 rounds" in caplog.text


def test_contract_names_the_pass() -> None:
    class Broken(Pass):
        def call(self, model: Model) -> PassResult:
            return model  # type: ignore[return-value]

    class Picky(Pass):
        def requires(self, model: Model) -> None:
            raise self.fail("needs a Conv")

        def call(self, model: Model) -> PassResult:
            raise AssertionError("call must not run when requires refuses")

    model = Model.from_proto(_relu_chain())
    with pytest.raises(PassError, match="pass Broken: returned Model, expected PassResult"):
        PassManager([Broken()]).run(model)
    with pytest.raises(PassError, match="pass Picky: needs a Conv"):
        Picky()(model)


def test_instruments_see_every_leaf_run_in_order_but_not_the_groups() -> None:
    seen = _Seen()
    order: list[str] = []
    steps = [_Record("p", order, changes=1), FixedPoint([_Record("q", order, changes=1)], name="g")]
    with PassContext((seen,)).active():
        PassManager(steps).run(Model.from_proto(_relu_chain()))
    assert seen.runs == [("_Record", True), ("_Record", True), ("_Record", False)]


def test_context_reaches_passes_called_directly_at_any_depth(tmp_path: Path) -> None:
    """A booster calls its pass directly, deep below the driver: the active context still sees it."""
    def booster(model: Model) -> None:  # stands for boosters.py / quantize.py / a backend
        DropDoubleRelu()(model)

    context = PassContext.for_build(dump_ir=tmp_path / "ir", check_each_pass=True)
    outside = _Seen()
    with PassContext((outside,)).active():
        with context.active():
            assert current_context() is context
            PassManager([FixedPoint([_Record("noop", [])])]).run(Model.from_proto(_relu_chain()))
            booster(Model.from_proto(_relu_chain()))
        assert current_context().instruments == (outside,)  # the outer context is back
        booster(Model.from_proto(_relu_chain()))
    timing = context.timing
    assert timing is not None and set(timing.seconds) == {"_Record", "DropDoubleRelu"}
    assert sorted(p.name for p in (tmp_path / "ir").iterdir()) == ["001_DropDoubleRelu.onnx"]
    assert outside.runs == [("DropDoubleRelu", True)]  # only the run after the inner block ended


def test_dump_numbering_continues_across_managers_and_direct_calls(tmp_path: Path) -> None:
    with PassContext.for_build(dump_ir=tmp_path).active():
        PassManager([_Record("a", [], changes=1), _Record("b", [])]).run(Model.from_proto(_relu_chain()))
        DropDoubleRelu()(Model.from_proto(_relu_chain()))
        extra = _Seen()
        PassManager([DropDoubleRelu()], instruments=[extra]).run(Model.from_proto(_relu_chain()))
    assert extra.runs == [("DropDoubleRelu", True)]
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["001__Record.onnx", "002_DropDoubleRelu.onnx", "003_DropDoubleRelu.onnx"]
    dumped = onnx.load(tmp_path / "002_DropDoubleRelu.onnx")
    onnx.checker.check_model(dumped)
    assert [n.op_type for n in dumped.graph.node] == ["Relu", "Mul"]


def test_no_instruments_outside_any_context() -> None:
    seen = _Seen()
    with PassContext((seen,)).active():
        pass
    DropDoubleRelu()(Model.from_proto(_relu_chain()))
    assert seen.runs == [] and current_context().instruments == ()


def test_node_rewrite_cleans_up_and_sorts_once_after_a_change(caplog: pytest.LogCaptureFixture) -> None:
    proto = _relu_chain()
    feeds = {"x": randn([2, 3], seed=3)}
    model = Model.from_proto(proto)
    with caplog.at_level(logging.DEBUG, logger="dsqc.pass_infra"):
        result = DropDoubleRelu()(model)
    assert result.modified
    # the rewrite only detached relu2; the context removed it and re-sorted the graph
    assert [n.name for n in model.graph.nodes] == ["relu1", "mul"]
    after = model.to_proto()
    onnx.checker.check_model(after, full_check=True)
    for ref, got in zip(run(proto, feeds), run(after, feeds), strict=True):
        assert rel_error(ref, got) <= TOL
    assert "input is not a Relu" not in caplog.text  # quiet refusal: relu1 reads a graph input
    assert "DropDoubleRelu: 1 rewrites" in caplog.text


def test_refusal_is_logged_and_leaves_the_graph_alone(caplog: pytest.LogCaptureFixture) -> None:
    nodes = [helper.make_node("Relu", ["x"], ["a"], name="relu1"),
             helper.make_node("Relu", ["a"], ["y"], name="relu2")]
    proto = make_model(nodes, [value("x", [2, 3])], [value("y", [2, 3])])
    model = Model.from_proto(proto)
    with caplog.at_level(logging.DEBUG, logger="dsqc.pass_infra"):
        result = DropDoubleRelu()(model)
    assert not result.modified and [n.name for n in model.graph.nodes] == ["relu1", "relu2"]
    assert "DropDoubleRelu: skip relu2 (Relu): output is a graph output" in caplog.text


def test_no_cleanup_when_the_pass_reports_no_change() -> None:
    class DetachQuietly(Pass):
        cleanup_after = True

        def call(self, model: Model) -> PassResult:
            model.graph.nodes.append(gs.Node("Relu", "orphan", inputs=[model.graph.inputs[0]],
                                             outputs=[gs.Variable("unused", np.float32)]))
            return PassResult(model, False)

    model = Model.from_proto(_relu_chain())
    DetachQuietly()(model)
    assert "orphan" in [n.name for n in model.graph.nodes]  # said "unchanged": left exactly as it is


def test_check_each_pass_names_the_pass_that_broke_the_graph(tmp_path: Path) -> None:
    model = Model.from_proto(_relu_chain())
    with PassContext.for_build(dump_ir=tmp_path, check_each_pass=True).active():
        PassManager([DropDoubleRelu()]).run(model)  # valid: checked and dumped
        with pytest.raises(PassError, match="pass _Breaks: left an invalid graph"):
            _Breaks()(model)
    assert [p.name for p in tmp_path.iterdir()] == ["001_DropDoubleRelu.onnx"]
    _Breaks()(Model.from_proto(_relu_chain()))  # without the check, nothing stops it


def test_dump_instrument_skips_unchanged_runs(tmp_path: Path) -> None:
    dump = DumpIRInstrument(tmp_path)
    with PassContext((dump,)).active():
        _Record("idle", [])(Model.from_proto(_relu_chain()))
    assert dump.count == 0 and not list(tmp_path.iterdir())
