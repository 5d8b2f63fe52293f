"""``prepare``: a torch module with fake quantization on exactly the tensors of a dsqc plan."""

from __future__ import annotations

import copy
import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import onnx
import torch
from torch import nn
from torch.nn.utils import parametrize

from dsqc.driver.build_folder import REPORT_NAME, plan_from_dict, read_build
from dsqc.qat.fake_quant import BiasFakeQuantize, FakeQuantize
from dsqc.qat.locate import Point, QatError, export_graph, fold_batchnorms, match
from dsqc.quant.spec import QuantPlan, QuantSpec

log = logging.getLogger(__name__)
OUTPUT_QUANT = "dsqc_output_quant"
_SAME_SCALE = {"MaxPool", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze"}


@dataclass
class QatState:
    """Plan tensor → point of the module, and how the module is exported."""

    points: dict[str, Point]
    input_names: list[str] | None
    output_names: list[str] | None
    learnable: bool
    folded_batchnorms: list[str] = field(default_factory=list)


class QatModule(nn.Module):
    """The prepared model: a copy of the user's module (``.module``) with fake quantization on its plan
    tensors, and the quantizers of its forward arguments (``.input_quant``)."""

    def __init__(self, module: nn.Module, state: QatState) -> None:
        super().__init__()
        object.__setattr__(self, "float_template", copy.deepcopy(module))  # not a submodule: not trained
        self.module = module
        self.input_quant = nn.ModuleDict()
        self.dsqc_qat = state

    def float_module(self) -> nn.Module:
        """The user's module as trained: float weights, no fake quantization (a fresh copy)."""
        plain: nn.Module = copy.deepcopy(self.__dict__["float_template"])
        with torch.no_grad():
            for name, param in plain.named_parameters():
                path, _, leaf = name.rpartition(".")
                owner = self.module.get_submodule(path)
                if parametrize.is_parametrized(owner, leaf):
                    param.copy_(getattr(owner.parametrizations, leaf).original)
                else:
                    param.copy_(getattr(owner, leaf))
            for name, buffer in plain.named_buffers():
                buffer.copy_(self.module.get_buffer(name))
        plain.train(self.module.training)
        return plain

    def forward(self, *args: Any) -> Any:
        return self.module(*(self.input_quant[str(i)](a) if str(i) in self.input_quant else a
                             for i, a in enumerate(args)))


def prepare(module: nn.Module, plan_or_bundle: QuantPlan | str | Path, example_inputs: Any, *,
            learn_scales: bool = False, input_names: list[str] | None = None,
            output_names: list[str] | None = None) -> QatModule:
    """A copy of ``module`` with fake quantization on exactly the tensors of the plan, initialised with
    the plan's (calibrated) scales and zero points. ``module`` itself is not changed.

    ``plan_or_bundle``: a ``QuantPlan``, a ``dsqc build`` output folder or its ``report.json``; the plan
    must come from the same export of this module (``dsqc build pkg:factory``, or an ONNX file exported
    with the same input/output names — pass ``input_names``/``output_names`` as it was exported).
    ``learn_scales``: scales become parameters trained LSQ-style; otherwise they stay fixed buffers.

    Supported: modules whose quantized tensors are all computed by leaf modules (``nn.Conv2d``,
    ``nn.Linear``, ``nn.ReLU``, ``nn.MaxPool2d``, ``nn.Flatten``, …) or are forward arguments; weights
    and biases are parameters of ``nn.Conv*``/``nn.Linear``. BatchNorm after a Conv is folded into it
    (eval statistics, then frozen), as dsqc's graph does. A tensor computed by a functional call
    (``F.relu``, ``x + y``) or a blockwise INT4 spec raises ``QatError`` naming the tensor.
    """
    plan = load_plan(plan_or_bundle)
    work = copy.deepcopy(module).eval()
    graph = export_graph(work, example_inputs, input_names, output_names)
    _check_names(plan, graph, type(module).__name__)
    folded = fold_batchnorms(work, example_inputs)
    found = match(graph, work, example_inputs, list(plan.tensors))
    producers = {o: n for n in graph.graph.node for o in n.output}
    points: dict[str, Point] = {}
    for name in plan.tensors:
        hits = found.points.get(name) or []
        if not hits:
            raise QatError(_unmatched(name, producers.get(name), type(module).__name__))
        points[name] = hits[-1]
    quants: dict[Point, FakeQuantize] = {}
    prepared = QatModule(work, QatState(points, input_names, output_names, learn_scales, folded))
    for name in _topological(plan, graph):
        spec, point = plan.tensors[name], points[name]
        if spec.dtype == "int32":
            continue
        key = Point(point.kind, point.path, point.index)
        if key in quants:
            if not quants[key].spec_template.same_as(spec):
                raise QatError(f"tensors of the plan with different specs are one point ({point.describe()}) "
                               f"of {type(module).__name__}: '{name}'")
            continue
        quants[key] = _shared(name, spec, graph, producers, points, quants) or \
            FakeQuantize(spec, learn_scales, _torch_axis(spec, point))
        _attach(prepared, point, quants[key])
    for name, spec in plan.tensors.items():
        if spec.dtype == "int32":
            _attach_bias(work, name, graph, points, quants)
    log.info("dsqc.qat: %d fake-quant points on %s (%d BatchNorm folded)", len(quants),
             type(module).__name__, len(folded))
    return prepared


def load_plan(plan_or_bundle: QuantPlan | str | Path) -> QuantPlan:
    if isinstance(plan_or_bundle, QuantPlan):
        return plan_or_bundle
    path = Path(plan_or_bundle)
    if path.is_file() and path.name == REPORT_NAME:
        return plan_from_dict(json.loads(path.read_text(encoding="utf-8"))["plan"], path)
    return read_build(path).plan


def _check_names(plan: QuantPlan, graph: onnx.ModelProto, module: str) -> None:
    known = {o for n in graph.graph.node for o in n.output} | {i.name for i in graph.graph.input} | \
        {t.name for t in graph.graph.initializer}
    missing = sorted(set(plan.tensors) - known)
    if missing:
        raise QatError(f"the plan's tensor '{missing[0]}' (and {len(missing) - 1} more) is not in dsqc's "
                       f"export of {module}: the plan was built from another model or export; build it "
                       f"from this module (dsqc build pkg:factory) or pass input_names/output_names as "
                       f"the ONNX file was exported")


def _unmatched(name: str, producer: onnx.NodeProto | None, module: str) -> str:
    made_by = f"{producer.op_type} node '{producer.name}'" if producer is not None else "a constant"
    return (f"the plan's tensor '{name}' ({made_by}) is not the output of any leaf module, forward "
            f"argument or Conv/Linear parameter of {module}: dsqc.qat supports modules that compute "
            f"every quantized tensor in a leaf module (nn.ReLU, nn.MaxPool2d, nn.Flatten, … rather than "
            f"F.relu or torch.flatten)")


def _topological(plan: QuantPlan, graph: onnx.ModelProto) -> list[str]:
    order = {i.name: k for k, i in enumerate(graph.graph.input)}
    for k, node in enumerate(graph.graph.node):
        for o in node.output:
            order.setdefault(o, len(graph.graph.input) + k)
    return sorted(plan.tensors, key=lambda n: (order.get(n, -1), n))


def _shared(name: str, spec: QuantSpec, graph: onnx.ModelProto, producers: dict[str, onnx.NodeProto],
            points: dict[str, Point], quants: dict[Point, FakeQuantize]) -> FakeQuantize | None:
    """A layout op's output with its input's spec shares the input's quantizer (and learned scale)."""
    node = producers.get(name)
    if node is None or node.op_type not in _SAME_SCALE or node.input[0] not in points:
        return None
    source = points[node.input[0]]
    quant = quants.get(Point(source.kind, source.path, source.index))
    return quant if quant is not None and quant.spec_template.same_as(spec) else None


def _torch_axis(spec: QuantSpec, point: Point) -> int | None:
    if spec.axis is None or not point.transposed:
        return spec.axis
    return 1 - spec.axis


def _attach(prepared: QatModule, point: Point, quant: FakeQuantize) -> None:
    module = prepared.module
    if point.kind == "input":
        prepared.input_quant[str(point.index)] = quant
    elif point.kind == "output":
        leaf = module.get_submodule(point.path)
        leaf.add_module(OUTPUT_QUANT, quant)
        leaf.register_forward_hook(quantize_output)
    else:
        parametrize.register_parametrization(module.get_submodule(point.path), point.kind, quant)


def _attach_bias(module: nn.Module, name: str, graph: onnx.ModelProto, points: dict[str, Point],
                 quants: dict[Point, FakeQuantize]) -> None:
    node = next(n for n in graph.graph.node if len(n.input) > 2 and n.input[2] == name)
    x, w = (points.get(node.input[i]) for i in (0, 1))
    x_quant = quants.get(Point(x.kind, x.path, x.index)) if x is not None else None
    w_quant = quants.get(Point(w.kind, w.path, w.index)) if w is not None else None
    if x_quant is None or w_quant is None:
        raise QatError(f"the plan quantizes bias '{name}' of node '{node.name}' but not its input and weight")
    layer = module.get_submodule(points[name].path)
    parametrize.register_parametrization(layer, "bias", BiasFakeQuantize(x_quant, w_quant))


def quantize_output(module: nn.Module, args: tuple[Any, ...], out: Any) -> Any:
    return getattr(module, OUTPUT_QUANT)(out)
