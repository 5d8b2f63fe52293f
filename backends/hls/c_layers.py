"""C99 for one integer op: a static function with constant loop bounds and its constant arrays.

The arithmetic mirrors ``dsqc.integer.reference`` term by term: int32 accumulation of
``(x − zp) · w`` plus the int32 bias (int64 where an int16 input could overflow int32), then
``dsqc_requant`` / ``dsqc_shift`` (the one rounding rule; ``…16`` variants write int16 tensors).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dsqc.integer import (
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

from .names import comment_text


@dataclass
class CArray:
    ctype: str
    name: str
    values: np.ndarray


@dataclass
class LayerCode:
    function: str
    code: str
    arrays: list[CArray] = field(default_factory=list)
    helpers: set[str] = field(default_factory=set)


def lit(value: int) -> str:
    """An int literal that is valid C for the whole int32 range."""
    value = int(value)
    return "(-2147483647 - 1)" if value == -(2**31) else str(value)


def minus_zp(expr: str, zp: int) -> str:
    return expr if zp == 0 else f"({expr} - {zp})" if zp > 0 else f"({expr} + {-zp})"


def affine(terms: list[tuple[str, int]], offset: int) -> str:
    """``a * 2 + b - 1`` from ``[("a", 2), ("b", 1)], -1`` (unit factors and zero offsets dropped)."""
    parts = [name if coef == 1 else f"{name} * {coef}" for name, coef in terms if coef]
    text = " + ".join(parts) or "0"
    return text if offset == 0 else f"{text} - {-offset}" if offset < 0 else f"{text} + {offset}"


class Emitter:
    """Writes one layer; ``parallelism`` drives UNROLL factors and ARRAY_PARTITION of weights."""

    def __init__(self, program: Program, parallelism: int) -> None:
        self.program = program
        self.p = parallelism

    def layer(self, op: Op, fn: str) -> LayerCode:
        self.fn = fn
        self.arrays: list[CArray] = []
        self.helpers: set[str] = set()
        self.wide_out = self.program.tensors[op.output].wide
        body = {ConvOp: self._conv, DenseOp: self._dense, PoolOp: self._pool, AddOp: self._add,
                ElementwiseOp: self._elementwise, ConcatOp: self._concat, LookupOp: self._lookup,
                LayerNormOp: self._layernorm, MatMulOp: self._matmul, SoftmaxOp: self._softmax,
                ConstantOp: self._constant, AddConstantOp: self._add_constant,
                MulOp: self._mul, TransposeOp: self._transpose, SliceOp: self._slice,
                UpsampleOp: self._upsample}[type(op)](op)
        out = self.program.tensors[op.output]
        head = [f"/* {comment_text(op.onnx_op)} node {comment_text(op.node)}: "
                f"-> {'x'.join(map(str, out.shape))} {out.ctype[:-2]} (scale {out.scale:.6g}, zero point "
                f"{out.zero_point}) */"]
        return LayerCode(fn, "\n".join(head + body) + "\n", self.arrays, self.helpers)

    # -- helpers ----------------------------------------------------------------------------------

    def _array(self, suffix: str, ctype: str, values: np.ndarray) -> str:
        name = f"{self.fn}_{suffix}"
        self.arrays.append(CArray(ctype, name, np.asarray(values).reshape(-1)))
        return name

    def _requant(self, rq: Requant, value: str, channel: str = "0") -> str:
        """C expression applying ``rq`` to ``value`` (per-channel arrays indexed by ``channel``), of the
        layer's output type."""
        tail = f"{rq.zero_point}, {rq.qmin}, {rq.qmax}"
        suffix = "16" if self.wide_out else ""
        if rq.shift_only:
            self.helpers.add(f"dsqc_shift{suffix}")
            exps = rq.n - np.log2(rq.m).astype(np.int64)
            e = (f"{self._array('e', 'int8_t', exps)}[{channel}]" if rq.per_channel
                 else str(int(exps[0])))
            return f"dsqc_shift{suffix}({value}, {e}, {tail})"
        self.helpers.add(f"dsqc_requant{suffix}")
        if rq.per_channel:
            m = f"{self._array('m', 'int32_t', rq.m)}[{channel}]"
            n = f"{self._array('n', 'int8_t', rq.n)}[{channel}]"
        else:
            m, n = lit(int(rq.m[0])), str(int(rq.n[0]))
        return f"dsqc_requant{suffix}({value}, {m}, {n}, {tail})"

    def _pragmas(self) -> list[str]:
        """Pipeline the loop and unroll it by the parallelism knob (P values per iteration)."""
        lines = ["#pragma HLS PIPELINE II=1"]
        if self.p > 1:
            lines.append(f"#pragma HLS UNROLL factor={self.p}")
        return lines

    def _partition(self, array: str) -> list[str]:
        """Split a weight ROM into P banks so P MACs per cycle can read it."""
        if self.p == 1:
            return []
        return [f"#pragma HLS ARRAY_PARTITION variable={array} cyclic factor={self.p} dim=1"]

    def _size(self, name: str) -> int:
        return self.program.tensors[name].size

    def _param(self, name: str, tensor: str, const: bool = True) -> str:
        """``const int8_t x[N]`` for a program tensor (its C type and size)."""
        info = self.program.tensors[tensor]
        return f"{'const ' if const else ''}{info.ctype} {name}[{info.size}]"

    def _params(self, op: Op, *names: str) -> str:
        """The layer's parameters: its inputs as ``names`` (all but the last), its output as the last."""
        ins = [self._param(n, t) for n, t in zip(names[:-1], op.inputs, strict=True)]
        return ", ".join([*ins, self._param(names[-1], op.output, const=False)])

    def _is_copy(self, op: Op, rq: Requant, in_zp: int) -> bool:
        """``rq`` leaves every value of the op's input (zero point ``in_zp``) as it is, in the same type."""
        x = self.program.tensors[op.inputs[0]]
        return rq.identity and rq.zero_point == in_zp and (rq.qmin, rq.qmax) == (x.qmin, x.qmax)

    # -- ops --------------------------------------------------------------------------------------

    def _conv(self, op: Op) -> list[str]:
        assert isinstance(op, ConvOp) and op.requant is not None
        _, _, h, w = self.program.tensors[op.inputs[0]].shape
        oc, icg, kh, kw = op.weight.shape
        _, _, oh, ow = self.program.tensors[op.output].shape
        k = icg * kh * kw
        (sy, sx), (dy, dx), (pt, pl, _, _) = op.strides, op.dilations, op.pads
        weights = self._array("w", "int8_t", op.weight.reshape(oc, k))
        bias = self._array("b", "int32_t", op.bias)
        acc = "int64_t" if op.acc64 else "int32_t"
        cin = "ic" if op.group == 1 else f"(oc / {oc // op.group} * {icg} + ic)"
        inside = f"iy >= 0 && iy < {h} && ix >= 0 && ix < {w}"
        term = f"{minus_zp(f'x[({cin} * {h} + iy) * {w} + ix]', op.in_zp)} * {weights}[oc * {k} + kk]"
        mac = [f"acc += {term};"]
        if any(op.pads):
            mac = [f"if ({inside}) {{", "    " + mac[0], "}"]
        taps = [f"const int ic = kk / {kh * kw};", f"const int ky = (kk / {kw}) % {kh};",
                f"const int kx = kk % {kw};", f"const int iy = {affine([('oy', sy), ('ky', dy)], -pt)};",
                f"const int ix = {affine([('ox', sx), ('kx', dx)], -pl)};"]
        store = f"y[(oc * {oh} + oy) * {ow} + ox] = {self._requant(op.requant, 'acc', 'oc')};"
        return self._reduction(op, ("x", "y"), weights, [("oc", oc), ("oy", oh), ("ox", ow)],
                               f"{acc} acc = {bias}[oc];", k, [*taps, *mac], store)

    def _dense(self, op: Op) -> list[str]:
        assert isinstance(op, DenseOp) and op.requant is not None
        n_out, k = op.weight.shape
        rows = self._size(op.inputs[0]) // k
        weights = self._array("w", "int8_t", op.weight)
        bias = self._array("b", "int32_t", op.bias)
        acc = "int64_t" if op.acc64 else "int32_t"
        mac = f"acc += {minus_zp(f'x[r * {k} + kk]', op.in_zp)} * {weights}[o * {k} + kk];"
        store = f"y[r * {n_out} + o] = {self._requant(op.requant, 'acc', 'o')};"
        return self._reduction(op, ("x", "y"), weights, [("r", rows), ("o", n_out)],
                               f"{acc} acc = {bias}[o];", k, [mac], store)

    def _matmul(self, op: Op) -> list[str]:
        assert isinstance(op, MatMulOp) and op.requant is not None
        m, k, n = op.rows, op.depth, op.cols
        (za, zb), acc = op.in_zps, "int64_t" if op.acc64 else "int32_t"
        a = minus_zp(f"({acc})a[(t * {m} + i) * {k} + kk]", za)
        b = minus_zp(f"b[(t * {k} + kk) * {n} + j]", zb)
        store = f"y[(t * {m} + i) * {n} + j] = {self._requant(op.requant, 'acc')};"
        return self._reduction(op, ("a", "b", "y"), None, [("t", op.batch), ("i", m), ("j", n)],
                               f"{acc} acc = 0;", k, [f"acc += {a} * {b};"], store)

    def _reduction(self, op: Op, names: tuple[str, ...], weights: str | None, loops: list[tuple[str, int]],
                   init: str, depth: int, body: list[str], store: str) -> list[str]:
        """A layer of nested output loops around one pipelined reduction over ``kk < depth``: ``init``
        the accumulator, ``body`` per tap, ``store`` the requantized result (conv, dense, matmul)."""
        outer = "    " * (len(loops) + 1)
        lines = [f"static void {self.fn}({self._params(op, *names)})", "{",
                 *(self._partition(weights) if weights else []),
                 f"    int {', '.join(v for v, _ in loops)}, kk;"]
        lines += [f"{'    ' * (i + 1)}for ({v} = 0; {v} < {n}; {v}++) {{" for i, (v, n) in enumerate(loops)]
        lines += [f"{outer}{init}", f"{outer}for (kk = 0; kk < {depth}; kk++) {{", *self._pragmas(),
                  *(f"{outer}    {line}" for line in body), f"{outer}}}", f"{outer}{store}"]
        lines += ["    " * (i + 1) + "}" for i in reversed(range(len(loops)))]
        return [*lines, "}"]

    def _softmax(self, op: Op) -> list[str]:
        assert isinstance(op, SoftmaxOp) and op.requant is not None
        n, stride = op.length, op.stride
        rows = self._size(op.inputs[0]) // n
        table = self._array("exp", "int32_t", op.table)
        self.helpers.add("dsqc_round_div")
        at = f"r * {n} + i" if stride == 1 else f"(r / {stride} * {n} + i) * {stride} + r % {stride}"
        x = f"x[{at}]"
        quotient = (f"dsqc_round_div((int64_t){table}[best - {x}] * {op.gain}, "
                    f"total * ((int64_t)1 << {op.gain_shift}))")
        return [
            f"static void {self.fn}({self._params(op, 'x', 'y')})", "{",
            "    int r, i;",
            f"    for (r = 0; r < {rows}; r++) {{",
            f"        int32_t best = {self.program.tensors[op.inputs[0]].qmin};",
            "        int64_t total = 0;",
            f"        for (i = 0; i < {n}; i++) {{",
            "#pragma HLS PIPELINE II=1",
            f"            if ({x} > best) {{", f"                best = {x};", "            }",
            "        }",
            f"        for (i = 0; i < {n}; i++) {{",
            "#pragma HLS PIPELINE II=1",
            f"            total += {table}[best - {x}];",
            "        }",
            f"        for (i = 0; i < {n}; i++) {{",
            "#pragma HLS PIPELINE II=1",
            f"            y[{at}] = {self._requant(op.requant, quotient)};",
            "        }", "    }", "}",
        ]

    def _layernorm(self, op: Op) -> list[str]:
        assert isinstance(op, LayerNormOp) and op.requant is not None
        n = op.length
        rows = self._size(op.inputs[0]) // n
        gamma = self._array("g", "int64_t", op.gamma)
        beta = self._array("b", "int64_t", op.beta)
        self.helpers |= {"dsqc_isqrt", "dsqc_round_div"}
        v = minus_zp(f"(int64_t)x[r * {n} + i]", op.in_zp)
        scale = f"((int64_t)1 << {op.frac_bits + op.root_shift})"
        value = self._requant(op.requant, f"dsqc_round_div(d, root) * {gamma}[i] + {beta}[i]")
        return [
            f"static void {self.fn}({self._params(op, 'x', 'y')})", "{",
            "    int r, i;",
            f"    for (r = 0; r < {rows}; r++) {{",
            "        int64_t s1 = 0, s2 = 0, root;",
            f"        for (i = 0; i < {n}; i++) {{",
            "#pragma HLS PIPELINE II=1",
            f"            const int64_t v = {v};",
            "            s1 += v;",
            "            s2 += v * v;",
            "        }",
            f"        root = (int64_t)dsqc_isqrt((uint64_t)({n} * s2 - s1 * s1 + {op.eps_term})"
            f" << {2 * op.root_shift});",
            "        if (root < 1) {", "            root = 1;", "        }",
            f"        for (i = 0; i < {n}; i++) {{",
            "#pragma HLS PIPELINE II=1",
            f"            const int64_t d = ({n} * {v} - s1) * {scale};",
            f"            y[r * {n} + i] = {value};",
            "        }", "    }", "}",
        ]

    def _pool(self, op: Op) -> list[str]:
        assert isinstance(op, PoolOp) and op.requant is not None
        _, c, h, w = self.program.tensors[op.inputs[0]].shape
        _, _, oh, ow = self.program.tensors[op.output].shape
        (kh, kw), (sy, sx), (pt, pl, _, _) = op.kernel, op.strides, op.pads
        is_max = op.mode == "max"
        x_info = self.program.tensors[op.inputs[0]]
        init = f"int32_t best = {x_info.qmin};" if is_max else "int32_t sum = 0;"
        update = ("if (v > best) {\n                            best = v;\n                        }"
                  if is_max else f"sum += {minus_zp('v', op.in_zp)};")
        rq = op.requant
        plain = is_max and self._is_copy(op, rq, op.in_zp)
        value = minus_zp("best", op.in_zp) if is_max else "sum"
        result = f"({x_info.ctype})best" if plain else self._requant(rq, value)
        load = [f"const int32_t v = x[(c * {h} + iy) * {w} + ix];", update]
        if any(op.pads):
            load = [f"if (iy >= 0 && iy < {h} && ix >= 0 && ix < {w}) {{",
                    *["    " + line for line in load], "}"]
        return [
            f"static void {self.fn}({self._params(op, 'x', 'y')})", "{",
            "    int c, oy, ox, ky, kx;",
            f"    for (c = 0; c < {c}; c++) {{",
            f"        for (oy = 0; oy < {oh}; oy++) {{",
            f"            for (ox = 0; ox < {ow}; ox++) {{",
            f"                {init}",
            f"                for (ky = 0; ky < {kh}; ky++) {{",
            f"                    for (kx = 0; kx < {kw}; kx++) {{",
            "#pragma HLS PIPELINE II=1",
            f"                        const int iy = {affine([('oy', sy), ('ky', 1)], -pt)};",
            f"                        const int ix = {affine([('ox', sx), ('kx', 1)], -pl)};",
            *["                        " + line for line in load],
            "                    }", "                }",
            f"                y[(c * {oh} + oy) * {ow} + ox] = {result};",
            "            }", "        }", "    }", "}",
        ]

    def _add(self, op: Op) -> list[str]:
        assert isinstance(op, AddOp) and op.requant is not None
        size = self._size(op.output)
        (za, zb), (ma, mb) = op.in_zps, op.in_mults
        value = (f"(int64_t){minus_zp('a[i]', za)} * {lit(ma)} + "
                 f"(int64_t){minus_zp('b[i]', zb)} * {lit(mb)}")
        return [
            f"static void {self.fn}({self._params(op, 'a', 'b', 'y')})",
            "{", "    int i;",
            f"    for (i = 0; i < {size}; i++) {{",
            *self._pragmas(),
            f"        y[i] = {self._requant(op.requant, value)};",
            "    }", "}",
        ]

    def _elementwise(self, op: Op) -> list[str]:
        assert isinstance(op, ElementwiseOp) and op.requant is not None
        size, rq = self._size(op.output), op.requant
        copy = self._is_copy(op, rq, op.in_zp)
        return self._unary(op, size, "x[i]" if copy else self._requant(rq, minus_zp("x[i]", op.in_zp)))

    def _lookup(self, op: Op) -> list[str]:
        assert isinstance(op, LookupOp)
        size, ctype = self._size(op.output), self.program.tensors[op.output].ctype
        return self._unary(op, size, f"{self._array('table', ctype, op.table)}[x[i] + 128]")

    def _unary(self, op: Op, size: int, expr: str) -> list[str]:
        """``y[i] = expr`` (of ``x[i]``) over one tensor."""
        return [
            f"static void {self.fn}({self._params(op, 'x', 'y')})", "{", "    int i;",
            f"    for (i = 0; i < {size}; i++) {{",
            *self._pragmas(),
            f"        y[i] = {expr};",
            "    }", "}",
        ]

    def _transpose(self, op: Op) -> list[str]:
        assert isinstance(op, TransposeOp) and op.requant is not None
        strides = _strides(self.program.tensors[op.inputs[0]].shape)
        shape = self.program.tensors[op.output].shape
        return self._gather(op, op.requant, op.in_zp, [(strides[p], 0, 1) for p in op.perm], shape)

    def _slice(self, op: Op) -> list[str]:
        assert isinstance(op, SliceOp) and op.requant is not None
        strides = _strides(self.program.tensors[op.inputs[0]].shape)
        axes = list(zip(strides, op.starts, op.steps, strict=True))
        return self._gather(op, op.requant, op.in_zp, axes, op.sizes)

    def _upsample(self, op: Op) -> list[str]:
        """Each input axis resized by f becomes an output axis pair [n, f] whose second axis reads the
        input with stride 0: the loops of ``_gather``, no division."""
        assert isinstance(op, UpsampleOp) and op.requant is not None
        shape_in = self.program.tensors[op.inputs[0]].shape
        axes: list[tuple[int, int, int]] = []
        shape: list[int] = []
        for stride, n, factor in zip(_strides(shape_in), shape_in, op.factors, strict=True):
            axes += [(stride, 0, 1)] + ([(0, 0, 1)] if factor > 1 else [])
            shape += [n] + ([factor] if factor > 1 else [])
        return self._gather(op, op.requant, op.in_zp, axes, tuple(shape))

    def _gather(self, op: Op, rq: Requant, zp: int, axes: list[tuple[int, int, int]],
                shape: tuple[int, ...]) -> list[str]:
        """Nested loops over ``shape`` (the output's, in the input's rank): output index ``i`` on axis
        ``a`` reads the input at ``Σ (first + i·step)·stride`` with ``axes[a] = (stride, first, step)``.
        Axis 0 gets a loop only where it is longer than 1 (torch's sequence-first layouts)."""
        loop = [a for a in range(len(shape)) if a > 0 or shape[0] > 1]
        idx = [f"i{j}" for j in range(len(loop))]
        offset = sum(stride * first for stride, first, _ in axes)
        source = affine([(i, axes[a][0] * axes[a][2]) for i, a in zip(idx, loop, strict=True)], offset)
        value = (f"x[{source}]" if self._is_copy(op, rq, zp)
                 else self._requant(rq, minus_zp(f"x[{source}]", zp)))
        out_strides = _strides(shape)
        target = affine([(i, out_strides[a]) for i, a in zip(idx, loop, strict=True)], 0)
        lines = [f"static void {self.fn}({self._params(op, 'x', 'y')})", "{",
                 f"    int {', '.join(idx)};"]
        for depth, (i, a) in enumerate(zip(idx, loop, strict=True)):
            lines.append(f"{'    ' * (depth + 1)}for ({i} = 0; {i} < {shape[a]}; {i}++) {{")
        lines += [*self._pragmas(), f"{'    ' * (len(loop) + 1)}y[{target}] = {value};"]
        lines += ["    " * (depth + 1) + "}" for depth in reversed(range(len(loop)))]
        return [*lines, "}"]

    def _constant(self, op: Op) -> list[str]:
        assert isinstance(op, ConstantOp)
        size, ctype = self._size(op.output), self.program.tensors[op.output].ctype
        values = self._array("values", ctype, op.values)
        return [f"static void {self.fn}({self._params(op, 'y')})", "{", "    int i;",
                f"    for (i = 0; i < {size}; i++) {{", *self._pragmas(), f"        y[i] = {values}[i];",
                "    }", "}"]

    def _add_constant(self, op: Op) -> list[str]:
        assert isinstance(op, AddConstantOp) and op.requant is not None
        constant = self._array("c", "int64_t", op.constant)
        value = f"{minus_zp('(int64_t)x[i]', op.in_zp)} * {lit(op.in_mult)} + {constant}[i]"
        return self._unary(op, self._size(op.output), self._requant(op.requant, value))

    def _mul(self, op: Op) -> list[str]:
        assert isinstance(op, MulOp) and op.requant is not None
        size, (za, zb) = self._size(op.output), op.in_zps
        channels = self.program.tensors[op.output].shape[1]
        inner = size // channels
        b_index = "c" if op.per_channel_b else f"c * {inner} + i"
        product = "int64_t" if op.wide else "int32_t"
        value = f"({product}){minus_zp(f'a[c * {inner} + i]', za)} * {minus_zp(f'b[{b_index}]', zb)}"
        return [
            f"static void {self.fn}({self._params(op, 'a', 'b', 'y')})",
            "{", "    int c, i;",
            f"    for (c = 0; c < {channels}; c++) {{",
            f"        for (i = 0; i < {inner}; i++) {{",
            *self._pragmas(),
            f"            y[c * {inner} + i] = {self._requant(op.requant, value)};",
            "        }", "    }", "}",
        ]

    def _concat(self, op: Op) -> list[str]:
        assert isinstance(op, ConcatOp)
        out = self.program.tensors[op.output]
        outer = int(np.prod(out.shape[:op.axis]))
        total = int(np.prod(out.shape[op.axis:]))
        params = self._params(op, *[f"x{i}" for i in range(len(op.inputs))], "y")
        lines = [f"static void {self.fn}({params})", "{", "    int o, i;"]
        offset = 0
        for idx, (name, zp, rq) in enumerate(zip(op.inputs, op.in_zps, op.requants, strict=True)):
            inner = int(np.prod(self.program.tensors[name].shape[op.axis:]))
            value = self._requant(rq, minus_zp(f"x{idx}[o * {inner} + i]", zp))
            lines += [f"    for (o = 0; o < {outer}; o++) {{",
                      f"        for (i = 0; i < {inner}; i++) {{",
                      *self._pragmas(),
                      f"            y[o * {total} + {offset} + i] = {value};",
                      "        }", "    }"]
            offset += inner
        return [*lines, "}"]


def _strides(shape: tuple[int, ...]) -> list[int]:
    """Row-major element strides of ``shape``."""
    return [int(np.prod(shape[a + 1:], dtype=np.int64)) for a in range(len(shape))]


def _clamp(ctype: str) -> str:
    return f"""\
    p += zp;
    if (p < lo) {{
        p = lo;
    }}
    if (p > hi) {{
        p = hi;
    }}
    return ({ctype})p;
}}
"""


def _requant_helper(ctype: str, suffix: str) -> str:
    return f"""\
/* value * mult / 2^shift rounded half to even, + zero point, saturated to [lo, hi]. */
static {ctype} dsqc_requant{suffix}(int64_t value, int32_t mult, int32_t shift, int32_t zp, int32_t lo,
    int32_t hi)
{{
    int64_t p = value * (int64_t)mult;
    if (shift > 0) {{
        p = dsqc_round_shift(p, shift);
    }}
""" + _clamp(ctype)


def _shift_helper(ctype: str, suffix: str) -> str:
    return f"""\
/* Power-of-two requantization: shift > 0 divides (half to even), shift < 0 multiplies by 2^-shift. */
static {ctype} dsqc_shift{suffix}(int64_t value, int32_t shift, int32_t zp, int32_t lo, int32_t hi)
{{
    int64_t p = value;
    if (shift > 0) {{
        p = dsqc_round_shift(p, shift);
    }} else if (shift < 0) {{
        p = p * ((int64_t)1 << -shift);
    }}
""" + _clamp(ctype)


HELPERS = {
    "dsqc_round_shift": """\
/* p / 2^shift rounded half to even (shift >= 1; arithmetic >> assumed, as gcc/clang/Vitis do). */
static int64_t dsqc_round_shift(int64_t p, int32_t shift)
{
    return (p + ((int64_t)1 << (shift - 1)) - 1 + ((p >> shift) & 1)) >> shift;
}
""",
    "dsqc_isqrt": """\
/* Floor square root of a 64-bit value, one result bit per step. */
static uint64_t dsqc_isqrt(uint64_t v)
{
    uint64_t r = 0, bit = (uint64_t)1 << 62;
    while (bit > v) {
        bit >>= 2;
    }
    while (bit != 0) {
        if (v >= r + bit) {
            v -= r + bit;
            r = (r >> 1) + bit;
        } else {
            r >>= 1;
        }
        bit >>= 2;
    }
    return r;
}
""",
    "dsqc_round_div": """\
/* num / den (den > 0) rounded half away from zero. */
static int64_t dsqc_round_div(int64_t num, int64_t den)
{
    return num < 0 ? -((-num + den / 2) / den) : (num + den / 2) / den;
}
""",
    "dsqc_requant": _requant_helper("int8_t", ""),
    "dsqc_requant16": _requant_helper("int16_t", "16"),
    "dsqc_shift": _shift_helper("int8_t", ""),
    "dsqc_shift16": _shift_helper("int16_t", "16"),
}
