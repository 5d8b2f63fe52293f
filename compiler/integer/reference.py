"""dsqc's integer reference: a numpy interpreter of a ``Program`` — the bit-exact definition.

Every op computes an exact integer value (sums of products in int64; large reductions go through
float64 matrix products, which are exact for integers below 2^53, the accumulator bound checked at
lowering) and then applies ``fixedpoint.requantize``.
Tensors are NCHW with any batch size N on axis 0.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import numpy as np

from dsqc.integer.fixedpoint import isqrt, requantize, round_div
from dsqc.integer.ops import (
    AddConstantOp,
    AddOp,
    ConcatOp,
    ConstantOp,
    ConvOp,
    DenseOp,
    ElementwiseOp,
    LayerNormOp,
    LookupOp,
    MatMulOp,
    MulOp,
    Op,
    PoolOp,
    Program,
    Requant,
    SliceOp,
    SoftmaxOp,
    TransposeOp,
    UpsampleOp,
)

Env = Mapping[str, np.ndarray]
_NEG = np.int64(-(2**40))


def quantize_inputs(program: Program, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Float graph inputs → int8 (int16) program inputs with ONNX QuantizeLinear's rule (round half to
    even)."""
    out: dict[str, np.ndarray] = {}
    for binding in program.inputs:
        info = program.tensors[binding.tensor]
        out[binding.onnx_name] = info.codes(feeds[binding.onnx_name])
    return out


def dequantize_outputs(program: Program, outputs: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Integer program outputs → float, as the graph's output DequantizeLinear does."""
    result: dict[str, np.ndarray] = {}
    for binding in program.outputs:
        info = program.tensors[binding.tensor]
        q = np.asarray(outputs[binding.onnx_name], dtype=np.int64)
        result[binding.onnx_name] = ((q - info.zero_point).astype(np.float32) * np.float32(info.scale))
    return result


def run(program: Program, feeds: Mapping[str, np.ndarray], keep_all: bool = False) -> dict[str, np.ndarray]:
    """Run on integer inputs (each its tensor's type: int8, or int16) keyed by graph input name; integer
    outputs keyed by graph output name. A program that moves axis 0 (``Program.batched`` false) runs
    one sample at a time, its results joined on axis 0 as ONNX Runtime joins a batch-1 model's.

    ``keep_all``: return every program tensor (keyed by program tensor name) instead.
    """
    for binding in program.inputs:
        x = np.asarray(feeds[binding.onnx_name])
        info = program.tensors[binding.tensor]
        if x.dtype != info.dtype:
            raise TypeError(f"input '{binding.onnx_name}' must be {np.dtype(info.dtype).name} "
                            "(use quantize_inputs)")
        expected = info.shape[1:]
        if tuple(x.shape[1:]) != expected:
            raise ValueError(f"input '{binding.onnx_name}': shape {x.shape}, expected [N, {expected}]")
    if program.batched:
        return _run(program, feeds, keep_all)
    count = len(np.asarray(feeds[program.inputs[0].onnx_name])) if program.inputs else 1
    runs = [_run(program, {k: np.asarray(v)[i:i + 1] for k, v in feeds.items()}, keep_all)
            for i in range(count)]
    return {k: np.concatenate([r[k] for r in runs]) for k in runs[0]}


def _run(program: Program, feeds: Mapping[str, np.ndarray], keep_all: bool) -> dict[str, np.ndarray]:
    env = {b.tensor: np.asarray(feeds[b.onnx_name]).astype(np.int64) for b in program.inputs}
    for op in program.ops:
        env[op.output] = execute(op, program, env)
    if keep_all:
        return {name: value.astype(program.tensors[name].dtype) for name, value in env.items()}
    return {b.onnx_name: env[b.tensor].astype(program.tensors[b.tensor].dtype) for b in program.outputs}


def execute(op: Op, program: Program, env: Mapping[str, np.ndarray]) -> np.ndarray:
    """One op on int tensors (int64 arrays, batch on axis 0) → its int output, shaped [N, ...]."""
    value = _EXEC[type(op)](op, env)
    shape = program.tensors[op.output].shape
    if value.size == int(np.prod(shape)):  # one sample: exactly the program's shape
        return value.reshape(shape)
    return value.reshape(value.shape[0], *shape[1:])


def _apply(rq: Requant, value: np.ndarray) -> np.ndarray:
    """The requantization stage; per-channel multipliers run along axis 1."""
    view = (1, -1) + (1,) * (value.ndim - 2) if rq.per_channel else (1,)
    return requantize(value, rq.m.reshape(view), rq.n.reshape(view), rq.zero_point, rq.qmin, rq.qmax)


def _windows(x: np.ndarray, kernel: tuple[int, int], strides: tuple[int, int],
             dilations: tuple[int, int], out_hw: tuple[int, int]) -> np.ndarray:
    """[N, C, H, W] (already padded) → [N, C, KH·KW, OH, OW] window taps."""
    taps = []
    for ky in range(kernel[0]):
        for kx in range(kernel[1]):
            y0, x0 = ky * dilations[0], kx * dilations[1]
            taps.append(x[:, :, y0:y0 + (out_hw[0] - 1) * strides[0] + 1:strides[0],
                          x0:x0 + (out_hw[1] - 1) * strides[1] + 1:strides[1]])
    return np.stack(taps, axis=2)


def _pad(x: np.ndarray, pads: tuple[int, int, int, int], value: np.generic) -> np.ndarray:
    top, left, bottom, right = pads
    return np.pad(x, ((0, 0), (0, 0), (top, bottom), (left, right)), constant_values=value)


def _conv(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, ConvOp) and op.requant is not None
    x = _pad((env[op.inputs[0]] - op.in_zp).astype(np.float64), op.pads, np.float64(0))
    oc, icg, kh, kw = op.weight.shape
    n = x.shape[0]
    oh = (x.shape[2] - op.dilations[0] * (kh - 1) - 1) // op.strides[0] + 1
    ow = (x.shape[3] - op.dilations[1] * (kw - 1) - 1) // op.strides[1] + 1
    cols = _windows(x, (kh, kw), op.strides, op.dilations, (oh, ow))  # [N, C, K2, OH, OW]
    cols = cols.reshape(n, op.group, icg * kh * kw, oh * ow)
    w = op.weight.reshape(1, op.group, oc // op.group, icg * kh * kw).astype(np.float64)
    acc = np.matmul(w, cols).reshape(n, oc, oh, ow)  # exact: integers far below 2^53
    acc = acc.astype(np.int64) + op.bias.astype(np.int64).reshape(1, oc, 1, 1)
    return _apply(op.requant, acc)


def _dense(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, DenseOp) and op.requant is not None
    x = env[op.inputs[0]]
    rows = (x - op.in_zp).astype(np.float64).reshape(-1, x.shape[-1])  # every row of a [N, …, K] tensor
    acc = (rows @ op.weight.astype(np.float64).T).astype(np.int64) + op.bias.astype(np.int64)
    return _apply(op.requant, acc).reshape(*x.shape[:-1], -1)


def _constant(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, ConstantOp)
    return op.values.astype(np.int64)


def _add_constant(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, AddConstantOp) and op.requant is not None
    x = env[op.inputs[0]]
    value = (x - op.in_zp) * np.int64(op.in_mult) + op.constant  # [1, …] broadcasts over a batch
    return _apply(op.requant, value)


def _matmul(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, MatMulOp) and op.requant is not None
    a = (env[op.inputs[0]] - op.in_zps[0]).astype(np.float64)
    b = (env[op.inputs[1]] - op.in_zps[1]).astype(np.float64)
    return _apply(op.requant, np.matmul(a, b).astype(np.int64))  # exact: sums below 2^53


def _softmax(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, SoftmaxOp) and op.requant is not None
    x = env[op.inputs[0]]
    rows = x.reshape(-1, op.length, op.stride)  # a row: axis 1, for each of the stride positions
    e = op.table.astype(np.int64)[rows.max(axis=1, keepdims=True) - rows]
    total = e.sum(axis=1, keepdims=True)
    return _apply(op.requant, round_div(e * op.gain, total * np.int64(2**op.gain_shift))).reshape(x.shape)


def _layernorm(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, LayerNormOp) and op.requant is not None
    x = env[op.inputs[0]]
    v = (x - op.in_zp).reshape(-1, op.length)
    s1 = v.sum(axis=1, keepdims=True)
    s2 = (v * v).sum(axis=1, keepdims=True)
    spread = (op.length * s2 - s1 * s1 + op.eps_term) * np.int64(4**op.root_shift)
    root = np.maximum(isqrt(spread), 1)
    y = round_div((op.length * v - s1) * np.int64(2 ** (op.frac_bits + op.root_shift)), root)
    return _apply(op.requant, y * op.gamma + op.beta).reshape(x.shape)


def _add(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, AddOp) and op.requant is not None
    a = (env[op.inputs[0]] - op.in_zps[0]) * np.int64(op.in_mults[0])
    b = (env[op.inputs[1]] - op.in_zps[1]) * np.int64(op.in_mults[1])
    return _apply(op.requant, a + b)


def _pool(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, PoolOp) and op.requant is not None
    x = env[op.inputs[0]]
    padded = _pad(x, op.pads, _NEG) if op.mode == "max" else _pad(x - op.in_zp, op.pads, np.int64(0))
    oh = (padded.shape[2] - op.kernel[0]) // op.strides[0] + 1
    ow = (padded.shape[3] - op.kernel[1]) // op.strides[1] + 1
    taps = _windows(padded, op.kernel, op.strides, (1, 1), (oh, ow))
    value = taps.max(axis=2) - op.in_zp if op.mode == "max" else taps.sum(axis=2)
    return _apply(op.requant, value)


def _elementwise(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, ElementwiseOp) and op.requant is not None
    x = env[op.inputs[0]]
    return _apply(op.requant, x - op.in_zp)


def _lookup(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, LookupOp)
    return op.table.astype(np.int64)[env[op.inputs[0]] + 128]


def _mul(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, MulOp) and op.requant is not None
    a, b = env[op.inputs[0]] - op.in_zps[0], env[op.inputs[1]] - op.in_zps[1]
    return _apply(op.requant, a * b)  # a [1, C, 1, …] gate broadcasts over the map


def _concat(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, ConcatOp)
    parts = [_apply(rq, env[name] - zp) for name, zp, rq in zip(op.inputs, op.in_zps, op.requants,
                                                                  strict=True)]
    return np.concatenate(parts, axis=op.axis)


def _transpose(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, TransposeOp) and op.requant is not None
    return _apply(op.requant, np.transpose(env[op.inputs[0]], op.perm) - op.in_zp)


def _slice(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, SliceOp) and op.requant is not None
    first = slice(op.starts[0], op.starts[0] + (op.sizes[0] - 1) * op.steps[0] + 1, op.steps[0]) \
        if op.cuts_first else slice(None)  # axis 0 is the batch unless the op cuts it (one sample a run)
    window = (first, *(slice(b, b + (n - 1) * s + 1, s) for b, n, s in
                       zip(op.starts[1:], op.sizes[1:], op.steps[1:], strict=True)))
    x = env[op.inputs[0]]
    return _apply(op.requant, x[window] - op.in_zp)


def _upsample(op: Op, env: Env) -> np.ndarray:
    assert isinstance(op, UpsampleOp) and op.requant is not None
    x = env[op.inputs[0]]
    for axis, factor in enumerate(op.factors):
        x = np.repeat(x, factor, axis=axis) if factor > 1 else x
    return _apply(op.requant, x - op.in_zp)


_EXEC: dict[type, Callable[[Op, Env], np.ndarray]] = {
    ConvOp: _conv, DenseOp: _dense, AddOp: _add, PoolOp: _pool, ElementwiseOp: _elementwise,
    ConcatOp: _concat, LookupOp: _lookup, LayerNormOp: _layernorm, MulOp: _mul,
    MatMulOp: _matmul, SoftmaxOp: _softmax, ConstantOp: _constant, AddConstantOp: _add_constant,
    TransposeOp: _transpose, SliceOp: _slice, UpsampleOp: _upsample,
}
