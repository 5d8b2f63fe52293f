"""InsertQDQ: apply a ``QuantPlan`` — the only pass that writes QuantizeLinear/DequantizeLinear.

Activations: one Q after the producer, one DQ per reader (ONNX Runtime fuses a DQ→op→Q group only
when each DQ feeds that op alone). A quantized graph output keeps its name: the DQ writes it.
Constants (weights, biases): stored quantized, with one DQ per quantized reader. Relu/Clip nodes
the plan folded are removed: the output Q's saturation is their clamp.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import ml_dtypes
import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model, is_graph_output, unique_name
from dsqc.op_kinds import QDQ_OPS
from dsqc.pass_infra import Pass, PassResult
from dsqc.quant.qparams import quantize
from dsqc.quant.spec import Precision, QuantPlan, QuantSpec

log = logging.getLogger(__name__)

# 4-bit values as ml_dtypes arrays: Model.to_proto packs them into INT4/UINT4 initializers.
_NUMPY = {"int8": np.int8, "uint8": np.uint8, "int16": np.int16, "int32": np.int32,
          "int4": ml_dtypes.int4, "uint4": ml_dtypes.uint4}


class _Names:
    """Unique tensor and node names for everything the pass creates."""

    def __init__(self, graph: gs.Graph) -> None:
        self.tensors = set(graph.tensors().keys())
        self.nodes = {node.name for node in graph.nodes}

    def tensor(self, hint: str) -> str:
        return unique_name(hint, self.tensors)

    def node(self, hint: str) -> str:
        return unique_name(hint, self.nodes)


class InsertQDQ(Pass):
    """Rewrites the FP32 graph into the canonical QDQ model described by ``plan``."""

    cleanup_after = True  # the context cleans up and sorts after a change

    def __init__(self, plan: QuantPlan, float_readers_read_float: bool = False) -> None:
        self.plan = plan
        self.float_readers_read_float = float_readers_read_float

    def requires(self, model: Model) -> None:
        if any(node.op in QDQ_OPS for node in model.graph.nodes):
            raise self.fail("the model already holds QuantizeLinear/DequantizeLinear nodes")

    def call(self, model: Model) -> PassResult:
        graph = model.graph
        by_name = {node.name: node for node in graph.nodes}
        for act_name in sorted(self.plan.folded_activations):
            _remove_folded(by_name[act_name])
        tensors = graph.tensors()
        names = _Names(graph)
        changed = bool(self.plan.folded_activations)
        for name in sorted(self.plan.tensors):
            spec, tensor = self.plan.tensors[name], tensors.get(name)
            if tensor is None:
                raise self.fail(f"plan names tensor '{name}', which the graph does not have")
            if isinstance(tensor, gs.Constant):
                changed |= self._quantize_constant(graph, names, tensor, spec)
            else:
                keep_float = self._is_int8 if self.float_readers_read_float else None
                changed |= _quantize_activation(graph, names, tensor, spec, keep_float)
        return PassResult(model, changed)

    def _is_int8(self, node: gs.Node) -> bool:
        return self.plan.precision_of(node.name) in (Precision.INT8, Precision.INT4)

    def _quantize_constant(self, graph: gs.Graph, names: _Names, tensor: gs.Constant,
                           spec: QuantSpec) -> bool:
        readers = [n for n in tensor.outputs
                   if self.plan.precision_of(n.name) in (Precision.INT8, Precision.INT4)]
        if not readers:
            return False
        values = quantize(np.asarray(tensor.values), spec).astype(_NUMPY[spec.dtype])
        stored = gs.Constant(names.tensor(f"{tensor.name}_quantized"), values)
        scale, zero = _qparams(names, spec, tensor.name)
        for reader in readers:
            out = gs.Variable(names.tensor(f"{tensor.name}_dequantized"), np.float32, list(tensor.shape))
            graph.nodes.append(_dq(names, stored, out, spec, scale, zero, tensor.name))
            _replace_input(reader, tensor, out)
        return True


def _quantize_activation(graph: gs.Graph, names: _Names, tensor: gs.Tensor, spec: QuantSpec,
                         is_int8: Callable[[gs.Node], bool] | None) -> bool:
    """Q after the producer, a DQ per reader. With ``is_int8`` given and a float producer (or a graph
    input) there is no fusion to protect: float readers keep reading the float tensor, unrounded."""
    float_producer = is_int8 is not None and (not tensor.inputs or not is_int8(tensor.inputs[0]))
    readers = [r for r in tensor.outputs if not float_producer or (is_int8 is not None and is_int8(r))]
    as_output = is_graph_output(graph, tensor) and not float_producer
    source: gs.Tensor = tensor
    if as_output:
        if not tensor.inputs:
            return False
        source = gs.Variable(names.tensor(f"{tensor.name}_float"), tensor.dtype, tensor.shape)
        producer = tensor.inputs[0]
        producer.outputs[producer.outputs.index(tensor)] = source
    q_out = gs.Variable(names.tensor(f"{tensor.name}_quantized"), _NUMPY[spec.dtype], tensor.shape)
    scale, zero = _qparams(names, spec, tensor.name)
    attrs = {"axis": spec.axis} if spec.axis is not None else {}
    graph.nodes.append(gs.Node("QuantizeLinear", names.node(f"{tensor.name}_QuantizeLinear"),
                               attrs, [source, scale, zero], [q_out]))
    for reader in readers:
        out = gs.Variable(names.tensor(f"{tensor.name}_dequantized"), np.float32, tensor.shape)
        graph.nodes.append(_dq(names, q_out, out, spec, scale, zero, tensor.name))
        _replace_input(reader, tensor, out)
    if as_output:
        graph.nodes.append(_dq(names, q_out, tensor, spec, scale, zero, tensor.name))
    return True


def _remove_folded(act: gs.Node) -> None:
    """Producer → Relu/Clip → y becomes Producer → y (the Q on y clamps)."""
    x, y = act.inputs[0], act.outputs[0]
    producer = x.inputs[0]
    act.outputs.clear()
    producer.outputs[producer.outputs.index(x)] = y
    act.inputs.clear()


def _qparams(names: _Names, spec: QuantSpec, hint: str) -> tuple[gs.Constant, gs.Constant]:
    scale = gs.Constant(names.tensor(f"{hint}_scale"), spec.scale.astype(np.float32))
    zero = gs.Constant(names.tensor(f"{hint}_zero_point"), spec.zero_point.astype(_NUMPY[spec.dtype]))
    return scale, zero


def _dq(names: _Names, source: gs.Tensor, out: gs.Tensor, spec: QuantSpec, scale: gs.Constant,
        zero: gs.Constant, hint: str) -> gs.Node:
    attrs: dict[str, int] = {}
    if spec.axis is not None:
        attrs["axis"] = spec.axis
    if spec.block_size:
        attrs["block_size"] = spec.block_size
    return gs.Node("DequantizeLinear", names.node(f"{hint}_DequantizeLinear"), attrs,
                   [source, scale, zero], [out])


def _replace_input(node: gs.Node, old: gs.Tensor, new: gs.Tensor) -> None:
    for i, tensor in enumerate(node.inputs):
        if tensor is old:
            node.inputs[i] = new
