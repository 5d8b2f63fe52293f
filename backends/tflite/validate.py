"""Check a ``.tflite`` before any interpreter sees it (LiteRT aborts the process on some bad files).

Reads the bytes back with the schema's own reader and checks what the runtime assumes but does not
always verify: quantization parameters on every int8 tensor, symmetric int8 weights in [-127, 127],
int32 biases with scale s_in·s_w, the fixed and shared output parameters, option values that would
silently give wrong results (zero strides, softmax beta 0), buffer sizes and 16-byte alignment.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from dsqc.errors import DsqcError

from .schema import OPTIONS, schema
from .writer import ALIGNMENT, FILE_IDENTIFIER, SCHEMA_VERSION

_ITEMSIZE = {"FLOAT32": 4, "INT8": 1, "UINT8": 1, "INT16": 2, "INT32": 4, "INT64": 8, "BOOL": 1}
_QRANGE = {"INT8": (-128, 127), "UINT8": (0, 255), "INT16": (-32768, 32767), "INT32": (-(2**31), 2**31 - 1)}
_WEIGHTED = {"CONV_2D": (1, 2, 0), "DEPTHWISE_CONV_2D": (1, 2, 3), "FULLY_CONNECTED": (1, 2, 0),
             "TRANSPOSE_CONV": (1, 3, 0)}   # weight input, bias input, per-channel dimension
_FIXED = {"SOFTMAX": (1 / 256, -128), "LOGISTIC": (1 / 256, -128), "TANH": (1 / 128, 0)}
_SAME_SCALE = {"AVERAGE_POOL_2D", "MAX_POOL_2D", "CONCATENATION", "RESHAPE", "SQUEEZE", "TRANSPOSE", "PAD",
               "PADV2", "GATHER", "SLICE", "STRIDED_SLICE", "RESIZE_BILINEAR", "RESIZE_NEAREST_NEIGHBOR",
               "MAXIMUM", "MINIMUM", "REDUCE_MAX"}


class TfliteValidationError(DsqcError):
    """The flatbuffer would crash or silently mislead the TFLite runtime."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        super().__init__(f"invalid .tflite: {problems[0]}{more}")


class _Checker:
    def __init__(self, blob: bytes) -> None:
        fb = schema()
        self.fb = fb
        self.problems: list[str] = []
        self.raw = fb.Model.GetRootAs(blob, 0)
        self.model = fb.ModelT.InitFromObj(self.raw)
        self.types = {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}
        self.ops = {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}
        self.base = np.frombuffer(blob, np.uint8).__array_interface__["data"][0]

    def fail(self, message: str) -> None:
        self.problems.append(message)

    def run(self) -> list[str]:
        m = self.model
        if m.version != SCHEMA_VERSION:
            self.fail(f"schema version {m.version}, expected {SCHEMA_VERSION}")
        buffers = m.buffers or []
        if not buffers or _data(buffers[0]) is not None:
            self.fail("buffers[0] must be the empty sentinel buffer")
        for i in range(1, len(buffers)):
            data = self.raw.Buffers(i)
            off = data._tab.Offset(4)
            if off and (data._tab.Vector(off)) % ALIGNMENT:
                self.fail(f"buffer {i} is not aligned to {ALIGNMENT} bytes")
        if not m.subgraphs:
            self.fail("no subgraph")
            return self.problems
        for sub in m.subgraphs:
            self._subgraph(sub, buffers)
        return self.problems

    def _subgraph(self, sub: Any, buffers: list[Any]) -> None:
        tensors = sub.tensors or []
        n = len(tensors)
        for i in [*_ints(sub.inputs), *_ints(sub.outputs)]:
            if not 0 <= i < n:
                self.fail(f"subgraph input/output index {i} out of range")
                return
        for t in tensors:
            self._tensor(t, buffers)
        if any(not 0 <= t.buffer < len(buffers) for t in tensors):
            return
        written = set(_ints(sub.inputs))
        written |= {i for i, t in enumerate(tensors) if _data(buffers[t.buffer]) is not None}
        codes = self.model.operatorCodes or []
        for k, op in enumerate(sub.operators or []):
            if not 0 <= op.opcodeIndex < len(codes):
                self.fail(f"operator {k}: opcode index {op.opcodeIndex} out of range")
                continue
            kind = self.ops.get(codes[op.opcodeIndex].builtinCode, "?")
            ins, outs = _ints(op.inputs), _ints(op.outputs)
            if any(not -1 <= i < n for i in ins) or any(not 0 <= i < n for i in outs):
                self.fail(f"operator {k} ({kind}): tensor index out of range")
                continue
            for i in ins:
                if i >= 0 and i not in written:
                    self.fail(f"operator {k} ({kind}) reads '{_name(tensors[i])}' before any op writes it")
            written.update(outs)
            self._options(kind, op, _name(tensors[outs[0]]) if outs else str(k))
            self._quant_rules(kind, [tensors[i] if i >= 0 else None for i in ins], [tensors[i] for i in outs],
                              buffers)

    def _tensor(self, t: Any, buffers: list[Any]) -> None:
        name, dtype = _name(t), self.types.get(t.type, str(t.type))
        shape = _ints(t.shape)
        if not 0 <= t.buffer < len(buffers):
            self.fail(f"tensor '{name}': buffer index {t.buffer} out of range")
            return
        data = _data(buffers[t.buffer])
        if data is not None and dtype in _ITEMSIZE and data.size != int(np.prod(shape)) * _ITEMSIZE[dtype]:
            self.fail(f"tensor '{name}': buffer holds {data.size} bytes, shape {shape} of {dtype} needs "
                      f"{int(np.prod(shape)) * _ITEMSIZE[dtype]}")
        if dtype in ("INT8", "UINT8", "INT16"):
            self._qparams(t, name, dtype, shape)

    def _qparams(self, t: Any, name: str, dtype: str, shape: list[int]) -> None:
        q = t.quantization
        scale, zero = _floats(q.scale) if q else [], _ints(q.zeroPoint) if q else []
        if not scale or not zero:
            self.fail(f"tensor '{name}' ({dtype}) has no quantization parameters (scale/zero point)")
            return
        if len(scale) != len(zero):
            self.fail(f"tensor '{name}': {len(scale)} scales but {len(zero)} zero points")
        if not all(np.isfinite(s) and s > 0 for s in scale):
            self.fail(f"tensor '{name}': scale {scale[:4]} is not positive and finite")
        lo, hi = _QRANGE[dtype]
        if any(not lo <= z <= hi for z in zero):
            self.fail(f"tensor '{name}': zero point {zero[:4]} outside the {dtype} range [{lo}, {hi}]")
        if len(scale) > 1:
            dim = q.quantizedDimension
            if not 0 <= dim < len(shape) or shape[dim] != len(scale):
                self.fail(f"tensor '{name}': {len(scale)} per-channel scales do not match dimension {dim} "
                          f"of shape {shape}")

    def _options(self, kind: str, op: Any, where: str) -> None:
        table = OPTIONS.get(kind)
        opts = op.builtinOptions
        if table is None:
            return
        if opts is None or op.builtinOptionsType != int(getattr(self.fb.BuiltinOptions, table)):
            if kind in ("CONV_2D", "DEPTHWISE_CONV_2D", "AVERAGE_POOL_2D", "MAX_POOL_2D", "SOFTMAX",
                        "TRANSPOSE_CONV", "CONCATENATION"):
                self.fail(f"{kind} writing '{where}' has no {table}")
            return
        if hasattr(opts, "strideW") and (opts.strideW < 1 or opts.strideH < 1):
            self.fail(f"{kind} writing '{where}': strides must be ≥ 1 (got {opts.strideH}, {opts.strideW})")
        if hasattr(opts, "filterWidth") and (opts.filterWidth < 1 or opts.filterHeight < 1):
            self.fail(f"{kind} writing '{where}': filter size must be ≥ 1")
        if kind == "SOFTMAX" and not opts.beta > 0:
            self.fail(f"SOFTMAX writing '{where}': beta {opts.beta} (0 gives a uniform output)")
        if kind == "DEPTHWISE_CONV_2D" and opts.depthMultiplier < 1:
            self.fail(f"DEPTHWISE_CONV_2D writing '{where}': depth multiplier must be ≥ 1")

    def _quant_rules(self, kind: str, ins: list[Any], outs: list[Any], buffers: list[Any]) -> None:
        x, out = (ins[0] if ins else None), (outs[0] if outs else None)
        if x is None or out is None or self.types.get(x.type) != "INT8":
            return
        if kind in _WEIGHTED:
            self._weights(kind, ins, buffers)
        if kind in _FIXED and self.types.get(out.type) == "INT8" and out.quantization is not None:
            scale, zero = _FIXED[kind]
            s, z = _floats(out.quantization.scale), _ints(out.quantization.zeroPoint)
            if not s or not z or abs(s[0] - scale) > 1e-6 * scale or z[0] != zero:
                self.fail(f"{kind} output '{_name(out)}' must have scale {scale:g} and zero point {zero} "
                          f"(has {s[:1]}, {z[:1]})")
        if kind in _SAME_SCALE and self.types.get(out.type) == "INT8":
            sources = [t for t in ins if t is not None] if kind == "CONCATENATION" else [x]
            for t in sources:
                if _qp(t) != _qp(out):
                    self.fail(f"{kind}: input '{_name(t)}' and output '{_name(out)}' must share scale and "
                              f"zero point ({_qp(t)} vs {_qp(out)})")

    def _weights(self, kind: str, ins: list[Any], buffers: list[Any]) -> None:
        w_at, b_at, dim = _WEIGHTED[kind]
        x = ins[2] if kind == "TRANSPOSE_CONV" else ins[0]
        w = ins[w_at] if len(ins) > w_at else None
        if w is None or x is None or x.quantization is None or not _floats(x.quantization.scale):
            return
        wname = _name(w)
        if self.types.get(w.type) != "INT8" or w.quantization is None:
            self.fail(f"{kind}: weight '{wname}' must be int8 with quantization parameters")
            return
        if any(z != 0 for z in _ints(w.quantization.zeroPoint)):
            self.fail(f"{kind}: weight '{wname}' must have zero point 0 (symmetric)")
        w_scale = np.asarray(_floats(w.quantization.scale), np.float32)
        if w_scale.size > 1 and w.quantization.quantizedDimension != dim:
            self.fail(f"{kind}: weight '{wname}' per-channel dimension {w.quantization.quantizedDimension}, "
                      f"expected {dim}")
        data = _data(buffers[w.buffer])
        if data is not None and data.view(np.int8).min(initial=0) < -127:
            self.fail(f"{kind}: weight '{wname}' holds -128; TFLite int8 weights are in [-127, 127]")
        b = ins[b_at] if len(ins) > b_at else None
        if b is None:
            return
        bname = _name(b)
        if self.types.get(b.type) != "INT32" or b.quantization is None or not _floats(b.quantization.scale):
            self.fail(f"{kind}: bias '{bname}' must be int32 with quantization parameters")
            return
        expected = np.float32(_floats(x.quantization.scale)[0]) * w_scale
        got = np.asarray(_floats(b.quantization.scale), np.float32)
        if got.size not in (1, expected.size) or not np.allclose(got, expected, rtol=1e-5, atol=0):
            self.fail(f"{kind}: bias '{bname}' scale {got[:3].tolist()} != input scale × weight scale "
                      f"{expected[:3].tolist()}")
        if any(z != 0 for z in _ints(b.quantization.zeroPoint)):
            self.fail(f"{kind}: bias '{bname}' must have zero point 0")


def _data(buffer: Any) -> np.ndarray | None:
    data = getattr(buffer, "data", None)
    return None if data is None or isinstance(data, int) or len(data) == 0 else np.asarray(data, np.uint8)


def _ints(values: Any) -> list[int]:
    return [] if values is None or isinstance(values, int) else [int(v) for v in values]


def _floats(values: Any) -> list[float]:
    return [] if values is None or isinstance(values, int) else [float(v) for v in values]


def _name(t: Any) -> str:
    name = t.name
    return name.decode() if isinstance(name, bytes) else str(name)


def _qp(t: Any) -> tuple[tuple[float, ...], tuple[int, ...]]:
    q = t.quantization
    return (tuple(_floats(q.scale)), tuple(_ints(q.zeroPoint))) if q is not None else ((), ())


def validate(blob: bytes) -> None:
    """Raise ``TfliteValidationError`` listing what is wrong with ``blob``; return if it is sound."""
    if len(blob) < 8 or blob[4:8] != FILE_IDENTIFIER:
        raise TfliteValidationError(["not a TFLite flatbuffer (file identifier is not TFL3)"])
    try:
        problems = _Checker(blob).run()
    except Exception as exc:  # a corrupt flatbuffer raises anything from the generated reader
        raise TfliteValidationError([f"unreadable flatbuffer ({type(exc).__name__}: {exc})"]) from exc
    if problems:
        raise TfliteValidationError(problems)
