"""``export``: the trained module as a QDQ ONNX model whose Q/DQ scales are the trained ones.

The module is exported in float (fake quantization off, the trained float weights) the way dsqc
exports any module, and dsqc's own ``InsertQDQ`` writes the Q/DQ from a plan holding the trained
specs: weights stored as integers with their scales, activations as QuantizeLinear→DequantizeLinear
pairs, biases int32 at ``s_in · s_w``. Relu/Clip are kept as nodes (nothing folded), so stripping the
Q/DQ gives back the trained FP32 model. ``dsqc build`` reads the scales back (``dsqc.quant.from_qdq``).
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from torch import nn

from dsqc.ir import Model
from dsqc.model_io import prepare as check_model
from dsqc.pass_infra import PassManager
from dsqc.passes.insert_qdq import InsertQDQ
from dsqc.qat.fake_quant import FakeQuantize
from dsqc.qat.locate import Point, QatError, as_tuple, export_graph, feeds_of, match, onnx_values
from dsqc.qat.prepare import OUTPUT_QUANT, QatModule
from dsqc.quant.from_qdq import SPEC_METADATA
from dsqc.quant.qparams import bias_spec
from dsqc.quant.spec import NodeDecision, Precision, QuantPlan

log = logging.getLogger(__name__)


def export(module: QatModule, example_inputs: Any, path: str | Path) -> Path:
    """Write ``path``: the QDQ ONNX of a module returned by ``dsqc.qat.prepare`` (and trained).

    Feed it to ``dsqc build path --target T --calib DATA``: the trained scales are kept.
    """
    if not isinstance(module, QatModule):
        raise QatError(f"{type(module).__name__} was not prepared: call dsqc.qat.prepare(module, plan, "
                       "example) "
                       "first and export the module it returns")
    state = module.dsqc_qat
    plain = float_copy(module)
    graph = export_graph(plain, example_inputs, state.input_names, state.output_names)
    found = match(graph, plain, example_inputs)
    plan = QuantPlan()
    for tensor, point in state.points.items():
        if point.kind == "bias":
            continue
        quant = quantizer(module, point)
        names = found.tensors.get(Point(point.kind, point.path, point.index))
        if not names:
            raise QatError(f"export: {point.describe()} (plan tensor '{tensor}') is not in the exported "
                           "graph")
        plan.tensors[names[-1]] = quant.spec()
    _plan_biases(graph, plan, {n for t, p in state.points.items() if p.kind == "bias"
                               for n in found.tensors.get(Point("bias", p.path), [])})
    model = PassManager([InsertQDQ(plan)]).run(Model.from_proto(graph)).model.to_proto()
    model.ir_version = graph.ir_version
    limits = {n: {"narrow": s.narrow, "limit": s.limit} for n, s in plan.tensors.items()
              if s.dtype != "int32"}
    onnx.helper.set_model_props(model, {SPEC_METADATA: json.dumps(limits, sort_keys=True),
                                        "producer": "dsqc.qat"})
    model = check_model(model, "dsqc.qat export")
    _compare(module, model, example_inputs)
    target = Path(path)
    staging = target.with_name(f".{target.name}.tmp")
    onnx.save(model, staging)
    os.replace(staging, target)
    log.info("dsqc.qat: wrote %s (%d quantized tensors)", target, len(plan.tensors))
    return target


def quantizer(prepared: QatModule, point: Point) -> FakeQuantize:
    """The fake-quant module that ``prepare`` attached at ``point``."""
    module = prepared.module
    if point.kind == "input":
        found = prepared.input_quant[str(point.index)]
    elif point.kind == "output":
        found = getattr(module.get_submodule(point.path), OUTPUT_QUANT)
    else:
        found = getattr(module.get_submodule(point.path).parametrizations, point.kind)[0]
    assert isinstance(found, FakeQuantize)
    return found


def float_copy(prepared: QatModule) -> nn.Module:
    """The user's module as trained: float weights, no fake quantization, no hooks."""
    return prepared.float_module()


def _plan_biases(graph: onnx.ModelProto, plan: QuantPlan, biases: set[str]) -> None:
    """int32 biases at ``s_in · s_w``, and the weight readers marked int8 (InsertQDQ reads that)."""
    for node in graph.graph.node:
        if len(node.input) < 2 or node.input[1] not in plan.tensors:
            continue
        plan.nodes[node.name] = NodeDecision(Precision.INT8, "trained with dsqc.qat")
        x_spec, w_spec = plan.tensors.get(node.input[0]), plan.tensors[node.input[1]]
        if len(node.input) > 2 and node.input[2] in biases and x_spec is not None:
            inits = {t.name: t for t in graph.graph.initializer}
            size = int(np.prod(inits[node.input[2]].dims))
            scale = w_spec.scale if w_spec.axis is not None else np.full(size, w_spec.scale, np.float32)
            plan.tensors[node.input[2]] = bias_spec(x_spec.scale, scale)


def _compare(module: QatModule, model: onnx.ModelProto, example_inputs: Any) -> None:
    """Log how far ORT's run of the QDQ model is from the fake-quantized module on the example."""
    with torch.no_grad():
        was_training = module.training
        out = module.eval()(*as_tuple(example_inputs))
        module.train(was_training)
    expected = out if isinstance(out, torch.Tensor) else out[0]
    name = model.graph.output[0].name
    got = onnx_values(model, feeds_of(model, example_inputs), [name])[name]
    diff = float(np.abs(got - expected.numpy()).max(initial=0.0))
    log.info("dsqc.qat: QDQ model vs fake-quantized module on the example: max |diff| %.3g", diff)
