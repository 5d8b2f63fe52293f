"""State while lowering a QDQ model to an integer program: the int tensors and ops so far, and what
the lowering functions (``lowering.py``) ask of the graph — activations behind a DQ (int8, or int16 where
the Q's zero point is int16), outputs read by one Q, qparams, int8 weights and int32 biases.
``program.py`` drives it."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx_graphsurgeon as gs

from dsqc.errors import UnsupportedError
from dsqc.integer.ops import ConstantOp, IOBinding, Op, TensorInfo
from dsqc.ir import constant_value

_INT8 = (-128, 127)
_INT16 = (-32768, 32767)


class Lowering:
    """State while lowering: int tensors, ops, and the Q/DQ structure of the graph."""

    def __init__(self, graph: gs.Graph, name: str) -> None:
        self.graph = graph
        self.name = name
        self.tensors: dict[str, TensorInfo] = {}
        self.by_q_output: dict[str, str] = {}  # Q output tensor name → program tensor name
        self.ops: list[Op] = []
        self.inputs: list[IOBinding] = []
        self.notes: list[str] = []
        self.islands: dict[str, str] = {}  # float node of the QDQ model → how the program computes it

    # -- activations ------------------------------------------------------------------------------

    def act(self, node: gs.Node, index: int) -> TensorInfo:
        """The int tensor behind float input ``index`` of ``node``, with the reading DQ's qparams."""
        return self.act_tensor(node, node.inputs[index])

    def act_tensor(self, node: gs.Node, tensor: gs.Tensor) -> TensorInfo:
        dq = tensor.inputs[0] if tensor.inputs else None
        if dq is None or dq.op != "DequantizeLinear":
            raise UnsupportedError(f"node '{node.name}' ({node.op}): input '{tensor.name}' is float, "
                                   "not an int8 tensor behind a DequantizeLinear")
        source = dq.inputs[0]
        key = self.by_q_output.get(source.name)
        if key is None:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): input '{tensor.name}' is not an "
                                   "int8 activation produced by the program")
        scale, zero, axis = self.qparams(dq)
        if axis is not None or scale.size != 1:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): per-channel activation "
                                   f"'{tensor.name}' is not supported")
        info = self.tensors[key]
        return TensorInfo(key, info.shape, float(scale.reshape(())), int(zero.reshape(())), info.qmin,
                          info.qmax)

    def output(self, node: gs.Node, shape: tuple[int, ...], index: int | None = None) -> TensorInfo:
        """Register the int tensor written by ``node``: its float output (output ``index`` of a node
        lowered to one op per output, a Split; else its only used output) must feed exactly one Q."""
        extra = [t.name for t in node.outputs[1:] if t.outputs or _is_output(self.graph, t)]
        if extra and index is None:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): extra outputs {extra} are used")
        tensor = node.outputs[index or 0]
        readers = list(tensor.outputs)
        if len(readers) != 1 or readers[0].op != "QuantizeLinear" or _is_output(self.graph, tensor):
            what = ", ".join(f"{r.name} ({r.op})" for r in readers) or "a graph output"
            raise UnsupportedError(f"node '{node.name}' ({node.op}): output '{tensor.name}' stays float "
                                   f"(read by {what}); the integer program needs exactly one "
                                   "QuantizeLinear after it")
        return self.register(readers[0], shape)

    def register(self, q: gs.Node, shape: tuple[int, ...]) -> TensorInfo:
        scale, zero, axis = self.qparams(q)
        if axis is not None or scale.size != 1:
            raise UnsupportedError(f"node '{q.name}' (QuantizeLinear): per-channel activation "
                                   "quantization is not supported")
        key = q.inputs[0].name if q.inputs[0].name not in self.tensors else q.outputs[0].name
        info = TensorInfo(key, tuple(int(d) for d in shape), float(scale.reshape(())),
                          int(zero.reshape(())), *self.value_range(q))
        self.tensors[key] = info
        self.by_q_output[q.outputs[0].name] = key
        return info

    def tensor_like(self, name: str, shape: tuple[int, ...], grid: TensorInfo) -> TensorInfo:
        """A tensor only the program has (no Q in the model writes it), on ``grid``'s scale and type."""
        info = TensorInfo(name, tuple(int(d) for d in shape), grid.scale, grid.zero_point, grid.qmin,
                          grid.qmax)
        self.tensors[name] = info
        return info

    def constant_tensor(self, node: str, name: str, real: np.ndarray, grid: TensorInfo) -> TensorInfo:
        """``real`` as integer codes on ``grid``, written by a ``ConstantOp`` of ``node``."""
        info = self.tensor_like(name, np.shape(real), grid)
        self.ops.append(ConstantOp(node, "Constant", [], name, values=info.codes(real)))
        return info

    def quantize(self, q: gs.Node, handled: set[str],
                  requantize: Callable[[Lowering, gs.Node], Op]) -> None:
        source = q.inputs[0]
        if source.name in handled:
            return
        if any(source is t for t in self.graph.inputs):
            info = self.register(q, _static_shape(source))
            self.inputs.append(IOBinding(source.name, info.name))
            return
        producer = source.inputs[0] if source.inputs else None
        if producer is not None and producer.op == "DequantizeLinear":
            self.ops.append(requantize(self, q))
            return
        value = constant_value(source)
        if value is not None:  # a constant activation (ViT's class token): its codes, once
            info = self.register(q, tuple(int(d) for d in np.shape(value)) or (1,))
            codes = info.codes(np.reshape(value, info.shape))
            self.ops.append(ConstantOp(q.name, "Constant", [], info.name, values=codes))
            return
        raise UnsupportedError(f"node '{q.name}' (QuantizeLinear): quantizes '{source.name}', which is "
                               "neither a graph input nor the output of a supported op")

    def output_binding(self, tensor: gs.Tensor) -> IOBinding:
        key = self.by_q_output.get(tensor.name)
        if key is not None:
            return IOBinding(tensor.name, key)
        producer = tensor.inputs[0] if tensor.inputs else None
        if producer is not None and producer.op == "DequantizeLinear":
            key = self.by_q_output.get(producer.inputs[0].name)
            if key is not None:
                return IOBinding(tensor.name, key)
        what = f"node '{producer.name}' ({producer.op})" if producer is not None else "no node"
        raise UnsupportedError(f"graph output '{tensor.name}' (written by {what}) is not an int8 tensor "
                               "behind a DequantizeLinear")

    # -- constants --------------------------------------------------------------------------------

    def qparams(self, node: gs.Node) -> tuple[np.ndarray, np.ndarray, int | None]:
        """(scale float64, zero point int64 shifted to int8, axis) of a Q or DQ node."""
        scale = self.constant(node, 1).astype(np.float64)
        zero_t = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        zero = constant_value(zero_t) if zero_t is not None else np.zeros(scale.shape, np.uint8)
        if zero is None:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): zero point is not a constant")
        zero_i = zero.astype(np.int64)
        if zero.dtype == np.uint8:
            zero_i = zero_i - 128
        elif zero.dtype not in (np.int8, np.int16, np.int32):
            raise UnsupportedError(f"node '{node.name}' ({node.op}): {zero.dtype} quantization is not "
                                   "supported (int8, uint8, int16 activations; int8 weights; int32 "
                                   "biases)")
        axis = node.attrs.get("axis") if scale.ndim == 1 else None
        if node.attrs.get("block_size"):
            raise UnsupportedError(f"node '{node.name}' ({node.op}): blockwise quantization is not "
                                   "supported")
        return scale, zero_i, axis

    def value_range(self, q: gs.Node) -> tuple[int, int]:
        """The integer range of the activation a Q writes: int16 when its zero point is int16, else
        int8 (uint8 shifted)."""
        zero_t = q.inputs[2] if len(q.inputs) > 2 and q.inputs[2].name else None
        zero = constant_value(zero_t) if zero_t is not None else None
        return _INT16 if zero is not None and np.asarray(zero).dtype == np.int16 else _INT8

    def constant(self, node: gs.Node, index: int) -> np.ndarray:
        if len(node.inputs) <= index or not node.inputs[index].name:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): input {index} is missing")
        value = constant_value(node.inputs[index])
        if value is None:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): input '{node.inputs[index].name}' "
                                   "must be a constant")
        return np.asarray(value)

    def weight(self, node: gs.Node, index: int, channel_axis: int) -> tuple[np.ndarray, np.ndarray]:
        """Constant int8 weight (zero point 0) and its scale per output channel (float64)."""
        tensor = node.inputs[index]
        dq = tensor.inputs[0] if tensor.inputs else None
        if dq is None or dq.op != "DequantizeLinear" or constant_value(dq.inputs[0]) is None:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): weight '{tensor.name}' must be a "
                                   "constant int8 tensor behind a DequantizeLinear")
        q = np.asarray(constant_value(dq.inputs[0]))
        scale, _, axis = self.qparams(dq)
        zero_t = dq.inputs[2] if len(dq.inputs) > 2 and dq.inputs[2].name else None
        zero = constant_value(zero_t) if zero_t is not None else np.zeros(1, np.int8)
        if q.dtype != np.int8 or zero is None or np.any(np.asarray(zero) != 0):
            raise UnsupportedError(f"node '{node.name}' ({node.op}): weight '{tensor.name}' must be "
                                   f"int8 with zero point 0 (got {q.dtype})")
        channels = q.shape[channel_axis % q.ndim]
        if axis is not None and axis % q.ndim != channel_axis % q.ndim:
            raise UnsupportedError(f"node '{node.name}' ({node.op}): weight scales on axis {axis}, "
                                   f"expected the output-channel axis {channel_axis}")
        scales = np.broadcast_to(scale.reshape(-1), (channels,)).astype(np.float64)
        return q.astype(np.int64), scales

    def bias(self, node: gs.Node, index: int, acc_scale: np.ndarray, noted: bool = True) -> np.ndarray:
        """int32 bias in units of ``acc_scale`` (= s_in·s_w per channel); zeros when absent. A float bias
        is noted (``noted``), unless it is the constant of a Linear's bias Add, float by design."""
        if len(node.inputs) <= index or not node.inputs[index].name:
            return np.zeros(acc_scale.shape, np.int64)
        tensor = node.inputs[index]
        dq = tensor.inputs[0] if tensor.inputs else None
        if dq is not None and dq.op == "DequantizeLinear":
            q = np.asarray(constant_value(dq.inputs[0])).astype(np.int64).reshape(-1)
            scale, zero, _ = self.qparams(dq)
            scale32 = (np.float32(1) * acc_scale).astype(np.float32)
            if np.all(zero == 0) and np.allclose(np.broadcast_to(scale, q.shape), scale32,
                                                 rtol=2e-7, atol=0):
                return q
            real = (q - zero.reshape(-1)) * scale.reshape(-1)
        else:
            real = self.constant(node, index).astype(np.float64).reshape(-1)
            if noted:
                self.notes.append(f"{node.name}: float bias quantized to int32 with scale s_in*s_w")
        out = np.rint(real / acc_scale)
        if np.any(np.abs(out) >= 2**31):
            raise UnsupportedError(f"node '{node.name}' ({node.op}): bias does not fit int32")
        return out.astype(np.int64)


def _is_output(graph: gs.Graph, tensor: gs.Tensor) -> bool:
    return any(tensor is t for t in graph.outputs)


def _static_shape(tensor: gs.Tensor) -> tuple[int, ...]:
    """Graph input shape with the batch dimension set to 1; other dims must be static."""
    shape = list(tensor.shape or [])
    if not shape:
        raise UnsupportedError(f"graph input '{tensor.name}' has no known shape")
    dims = [1 if i == 0 and not isinstance(d, int) else d for i, d in enumerate(shape)]
    if not all(isinstance(d, int) and d > 0 for d in dims):
        raise UnsupportedError(f"graph input '{tensor.name}' has dynamic dimensions {shape}; the "
                               "integer program needs static shapes")
    return (1, *[int(d) for d in dims[1:]])
