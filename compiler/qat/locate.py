"""Where each ONNX tensor of dsqc's export of a torch module lives in the module.

The module is exported the way ``dsqc build module:factory`` does (``dsqc.torch_export.from_torch``)
and normalized by dsqc's pipeline, so tensor names are the ones a dsqc plan uses. The mapping is
found by value, not by name: Conv/Gemm/MatMul weight and bias initializers ↔ module parameters (by
shape and value, transposed for MatMul), activations ↔ outputs of leaf modules recorded by forward
hooks and graph inputs ↔ the forward's arguments, all on the example input (ONNX Runtime runs the
graph). Several equal candidates (a Conv's output and the ``nn.Identity`` left by a folded BatchNorm)
are the same numbers, so the last one computed is taken.
"""

from __future__ import annotations

import copy
import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from dsqc.driver.pipeline import normalize
from dsqc.errors import DsqcError
from dsqc.quant.weights import BIAS_INPUT, WEIGHT_INPUT
from dsqc.torch_export import from_torch

log = logging.getLogger(__name__)
RTOL = 1e-3  # of the tensor's largest magnitude: float order differences, not different tensors


class QatError(DsqcError):
    """The module and the plan do not fit together (or the module is not prepared)."""


@dataclass(frozen=True)
class Point:
    """A place in the module: ``input`` (forward argument ``index``), a leaf module's ``output``, or
    a leaf module's ``weight`` / ``bias`` parameter (``transposed``: ONNX stores it transposed)."""

    kind: str
    path: str = ""
    index: int = 0
    transposed: bool = False

    def describe(self) -> str:
        if self.kind == "input":
            return f"forward argument {self.index}"
        return f"{self.kind} of module '{self.path or '<root>'}'"


def as_tuple(example_inputs: Any) -> tuple[torch.Tensor, ...]:
    return example_inputs if isinstance(example_inputs, tuple) else (example_inputs,)


def export_graph(module: nn.Module, example_inputs: Any, input_names: list[str] | None,
                 output_names: list[str] | None) -> onnx.ModelProto:
    """``module`` exported as ``dsqc build module:factory`` exports it, then normalized."""
    proto = from_torch(module, example_inputs, input_names=input_names, output_names=output_names)
    return normalize(proto, label=f"{type(module).__name__} (dsqc.qat export)").model


def leaves(module: nn.Module) -> dict[str, nn.Module]:
    return {name: m for name, m in module.named_modules() if not any(True for _ in m.children())}


@dataclass
class _Seen:
    path: str
    module: nn.Module
    inputs: list[int]
    output: torch.Tensor
    output_id: int


def trace(module: nn.Module, example_inputs: Any) -> tuple[list[_Seen], list[torch.Tensor]]:
    """Run ``module`` once; every leaf call in execution order with its input ids and output."""
    seen: list[_Seen] = []
    keep: list[Any] = []  # tensors stay alive during the run, so ids are unique

    def hook(path: str) -> Any:
        def record(mod: nn.Module, args: tuple[Any, ...], out: Any) -> None:
            keep.append((args, out))
            if isinstance(out, torch.Tensor):
                seen.append(_Seen(path, mod, [id(a) for a in args if isinstance(a, torch.Tensor)],
                                  out.detach(), id(out)))
        return record

    handles = [m.register_forward_hook(hook(p)) for p, m in leaves(module).items()]
    try:
        with torch.no_grad():
            module(*as_tuple(example_inputs))
    finally:
        for handle in handles:
            handle.remove()
    return seen, list(as_tuple(example_inputs))


def fold_batchnorms(module: nn.Module, example_inputs: Any) -> list[str]:
    """Fold every BatchNorm that reads a Conv's output into that Conv (eval statistics) and replace it
    with ``nn.Identity``, as dsqc's normalization does in the graph. Returns the folded BN paths."""
    seen, _ = trace(module, example_inputs)
    convs = {s.output_id: s for s in seen if type(s.module) in (nn.Conv1d, nn.Conv2d, nn.Conv3d)}
    with torch.no_grad():
        before = module(*as_tuple(example_inputs))
        folded = []
        for bn in (s for s in seen if isinstance(s.module, nn.modules.batchnorm._BatchNorm)):
            conv = convs.get(bn.inputs[0]) if bn.inputs else None
            norm: Any = bn.module
            if conv is None or norm.running_mean is None or norm.running_var is None:
                continue
            factor = torch.rsqrt(norm.running_var + norm.eps)
            if norm.weight is not None:
                factor = factor * norm.weight
            layer: Any = conv.module
            bias = layer.bias if layer.bias is not None else torch.zeros_like(norm.running_mean)
            shift = norm.bias if norm.bias is not None else torch.zeros_like(norm.running_mean)
            layer.weight.copy_(layer.weight * factor.reshape(-1, *[1] * (layer.weight.dim() - 1)))
            layer.bias = nn.Parameter((bias - norm.running_mean) * factor + shift)
            parent, _, child = bn.path.rpartition(".")
            setattr(module.get_submodule(parent), child, nn.Identity())
            folded.append(bn.path)
        after = module(*as_tuple(example_inputs))
    for a, b in zip(_flat(before), _flat(after), strict=True):
        if not _close(a.numpy(), b.numpy()):
            raise QatError(f"folding BatchNorm {folded} into the preceding Conv changed "
                           f"{type(module).__name__}'s "
                           "output: a Conv output read by a BatchNorm is read elsewhere too; fold it "
                           "yourself")
    return folded


def _flat(out: Any) -> list[torch.Tensor]:
    if isinstance(out, torch.Tensor):
        return [out.detach()]
    return [t.detach() for t in out if isinstance(t, torch.Tensor)] if isinstance(out, list | tuple) else []


def _close(a: np.ndarray, b: np.ndarray) -> bool:
    if a.shape != b.shape:
        return False
    scale = float(np.abs(a).max(initial=0.0))
    return float(np.abs(a.astype(np.float64) - b).max(initial=0.0)) <= RTOL * scale + 1e-7


def onnx_values(proto: onnx.ModelProto, feeds: dict[str, np.ndarray],
                names: Iterable[str]) -> dict[str, np.ndarray]:
    """The float values of ``names`` (activations of ``proto``) on ``feeds``, through ONNX Runtime."""
    wanted = [n for n in dict.fromkeys(names) if n not in feeds]
    model = copy.deepcopy(proto)
    present = {o.name for o in model.graph.output}
    for name in wanted:
        if name not in present:
            model.graph.output.append(onnx.helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None))
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    session = ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
    values = dict(zip(wanted, session.run(wanted, feeds), strict=True))
    return {**{n: feeds[n] for n in names if n in feeds}, **values}


def feeds_of(proto: onnx.ModelProto, example_inputs: Any) -> dict[str, np.ndarray]:
    inits = {t.name for t in proto.graph.initializer}
    names = [i.name for i in proto.graph.input if i.name not in inits]
    return {n: t.detach().cpu().numpy() for n, t in zip(names, as_tuple(example_inputs), strict=True)}


@dataclass
class Matches:
    """ONNX tensor name ↔ points with equal values, both sides in computation order."""

    points: dict[str, list[Point]]
    tensors: dict[Point, list[str]]


def match(proto: onnx.ModelProto, module: nn.Module, example_inputs: Any,
          names: Sequence[str] | None = None) -> Matches:
    """Pair the tensors ``names`` of ``proto`` (default: every float tensor) with points of ``module``."""
    graph = proto.graph
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in graph.initializer}
    params = _param_roles(graph)
    order = [o for n in graph.node for o in n.output if o]
    inputs = [i.name for i in graph.input if i.name not in inits]
    wanted = list(names) if names is not None else [*inputs, *order, *params]
    seen, args = trace(module, example_inputs)
    feeds = feeds_of(proto, example_inputs)
    values = onnx_values(proto, feeds, [n for n in wanted if n not in inits])
    candidates: list[tuple[Point, np.ndarray]] = [(Point("input", index=i), a.detach().numpy())
                                                  for i, a in enumerate(args)]
    candidates += [(Point("output", s.path), s.output.numpy()) for s in seen]
    weights = [(Point(role, path), p.detach().numpy()) for path, m in leaves(module).items()
               for role in ("weight", "bias") if isinstance(p := getattr(m, role, None), torch.Tensor)]
    found = Matches({}, {})
    for name in sorted(wanted, key=lambda n: params.get(n, ("", ""))[0] == "bias"):  # weights first
        if name in inits:
            role, weight_name = params.get(name, ("", ""))
            pool = [(p, v) for p, v in weights if p.kind == role]
            if role == "bias":  # the bias of the module whose weight this node reads
                owners = {p.path for p in found.points.get(weight_name, [])}
                pool = [(p, v) for p, v in pool if p.path in owners]
            hits = [p for p, v in pool if _close(inits[name], v)]
            hits += [Point(p.kind, p.path, transposed=True) for p, v in pool
                     if v.ndim == 2 and v.shape[0] != v.shape[1] and _close(inits[name], v.T)]
        elif name in values:
            hits = [p for p, v in candidates if _close(values[name], v)]
        else:
            continue
        found.points[name] = hits
        for point in hits:
            found.tensors.setdefault(Point(point.kind, point.path, point.index), []).append(name)
    return found


def _param_roles(graph: onnx.GraphProto) -> dict[str, tuple[str, str]]:
    """Initializer → (``weight`` | ``bias``, the node's weight initializer) for Conv/Gemm/MatMul."""
    inits = {t.name for t in graph.initializer}
    roles: dict[str, tuple[str, str]] = {}
    for node in graph.node:
        weight = node.input[1] if len(node.input) > 1 else ""
        for role, table in (("weight", WEIGHT_INPUT), ("bias", BIAS_INPUT)):
            index = table.get(node.op_type)
            if index is not None and len(node.input) > index and node.input[index] in inits:
                roles[node.input[index]] = (role, weight)
    return roles
