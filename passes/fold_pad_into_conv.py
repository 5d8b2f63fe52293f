"""Fold a zero constant Pad on spatial dims into the ``pads`` of the Conv that reads it."""

from __future__ import annotations

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.ir import Model, constant_value, only_consumer, producer, tensor_rank
from dsqc.pass_infra import NodeRewritePass


def _optional_input(node: gs.Node, index: int) -> gs.Tensor | None:
    if len(node.inputs) <= index or node.inputs[index].is_empty():
        return None
    return node.inputs[index]


def _mode(node: gs.Node) -> str:
    mode = node.attrs.get("mode", "constant")
    return mode.decode() if isinstance(mode, bytes) else str(mode)


def _pad_arguments(pad: gs.Node, opset: int) -> tuple[np.ndarray, np.ndarray | None] | str:
    """``(pads, axes)`` of a zero-valued constant-mode Pad, or the reason it is not one."""
    if _mode(pad) != "constant":
        return f"mode {_mode(pad)}"
    if opset < 11:
        return np.asarray(pad.attrs.get("pads", []), np.int64), None
    pads = constant_value(pad.inputs[1]) if len(pad.inputs) > 1 else None
    value_t, axes_t = _optional_input(pad, 2), _optional_input(pad, 3)
    value = None if value_t is None else constant_value(value_t)
    axes = None if axes_t is None else constant_value(axes_t)
    if pads is None:
        return "pads are not constant"
    if value_t is not None and (value is None or np.any(value != 0)):
        return "pad value is not constant zero"
    if axes_t is not None and axes is None:
        return "axes are not constant"
    return pads.astype(np.int64).ravel(), None if axes is None else axes.astype(np.int64).ravel()


def _full_pads(pads: np.ndarray, axes: np.ndarray | None, rank: int) -> np.ndarray | str:
    """Pads as ``[begin_0..begin_{r-1}, end_0..end_{r-1}]`` over every axis, or the refusal."""
    axes = np.arange(rank) if axes is None else axes
    if len(pads) != 2 * len(axes) or np.any((axes < -rank) | (axes >= rank)):
        return f"pads {pads.tolist()} / axes {axes.tolist()} do not fit rank {rank}"
    full = np.zeros(2 * rank, np.int64)
    for i, axis in enumerate(axes % rank):
        full[axis] += pads[i]
        full[rank + axis] += pads[len(axes) + i]
    return full


NO_PAD = "input is not produced by Pad"


def pad_fold_plan(graph: gs.Graph, conv: gs.Node, opset: int) -> tuple[gs.Node, np.ndarray] | str:
    """``(pad, new conv pads)`` when the Pad before ``conv`` folds into it, else the reason."""
    x = conv.inputs[0]
    pad = producer(x)
    if pad is None or pad.op != "Pad":
        return NO_PAD
    if not only_consumer(graph, x, conv):
        return f"{x.name} has other readers or is a graph output"
    if conv.attrs.get("auto_pad", "NOTSET") not in ("NOTSET", b"NOTSET"):
        return f"auto_pad={conv.attrs['auto_pad']}"
    rank = tensor_rank(conv.inputs[1]) or tensor_rank(pad.inputs[0])
    if rank is None or rank < 3:
        return "rank of the convolution input is unknown"
    arguments = _pad_arguments(pad, opset)
    if isinstance(arguments, str):
        return arguments
    full = _full_pads(*arguments, rank)
    if isinstance(full, str):
        return full
    if np.any(full < 0):
        return f"negative pads {full.tolist()} (a crop)"
    if np.any(full[[0, 1, rank, rank + 1]] != 0):
        return f"pads {full.tolist()} touch the batch or channel axis"
    spatial = rank - 2
    current = np.asarray(conv.attrs.get("pads", [0] * 2 * spatial), np.int64)
    return pad, current + np.concatenate([full[2:rank], full[rank + 2:]])


class FoldPadIntoConv(NodeRewritePass):
    """Remove ``Pad(x)`` in front of a Conv by adding its amounts to the Conv's ``pads``.

    Only a constant-mode Pad with value zero (absent or a constant 0) is folded: the attribute form
    of opset < 11 and the input form of opset >= 11 including opset 18's ``axes``. Refuses reflect
    or edge modes, a non-zero or non-constant value, non-constant pads or axes, negative pads,
    padding on the batch or channel axis, a Conv with ``auto_pad`` other than NOTSET, and a Pad
    output that another node reads or that is a graph output.
    """

    op_types = frozenset({"Conv"})
    quiet_refusals = frozenset({NO_PAD})

    def refusal(self, node: gs.Node, model: Model) -> str | None:
        found = pad_fold_plan(model.graph, node, model.opset)
        return found if isinstance(found, str) else None

    def rewrite(self, node: gs.Node, model: Model) -> None:
        found = pad_fold_plan(model.graph, node, model.opset)
        assert not isinstance(found, str)
        pad, pads = found
        node.inputs[0] = pad.inputs[0]
        node.attrs["pads"] = [int(p) for p in pads]
        pad.inputs.clear()
        pad.outputs.clear()
