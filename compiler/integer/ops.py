"""The typed integer program: int8 or int16 tensors (NCHW, batch 1), integer ops, and their requantization.

Every op ends in a ``Requant`` stage (see ``fixedpoint``): an int32/int64 value per element becomes
``clamp(zero_point + round_shift(value · m[c], n[c]), qmin, qmax)`` with ``c`` the output channel
(axis 1) when the multipliers are per channel.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from dsqc.integer.fixedpoint import Multiplier


@dataclass(frozen=True)
class TensorInfo:
    """An int8 (or int16) activation tensor: shape with batch 1, the affine map ``real = scale·(q − zp)``
    and the integer range."""

    name: str
    shape: tuple[int, ...]
    scale: float
    zero_point: int
    qmin: int = -128
    qmax: int = 127

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    @property
    def wide(self) -> bool:
        """int16, not int8."""
        return self.qmax > 127

    @property
    def dtype(self) -> type[np.signedinteger]:
        return np.int16 if self.wide else np.int8

    @property
    def ctype(self) -> str:
        return "int16_t" if self.wide else "int8_t"

    @property
    def nbytes(self) -> int:
        """Bytes of the tensor's buffer (batch 1)."""
        return self.size * np.dtype(self.dtype).itemsize

    @property
    def span(self) -> int:
        """The largest ``|q − zp|`` the tensor can hold."""
        return max(self.qmax - self.zero_point, self.zero_point - self.qmin)

    def codes(self, real: np.ndarray) -> np.ndarray:
        """Real values as this tensor's integer codes, by ONNX QuantizeLinear's rule: divided by the
        scale in float32, rounded half to even, offset by the zero point, saturated."""
        q = np.rint(np.asarray(real, np.float32) / np.float32(self.scale)) + self.zero_point
        return np.clip(q, self.qmin, self.qmax).astype(self.dtype)

    def same_quant(self, other: TensorInfo) -> bool:
        return self.scale == other.scale and self.zero_point == other.zero_point


@dataclass(frozen=True, eq=False)
class Requant:
    """Per-channel (or per-tensor, length 1) multipliers and shifts, output zero point and clamp."""

    m: np.ndarray
    n: np.ndarray
    zero_point: int
    qmin: int
    qmax: int
    identity: bool = False

    @classmethod
    def build(cls, mults: list[Multiplier], zero_point: int, qmin: int, qmax: int) -> Requant:
        m = np.array([x.m for x in mults], dtype=np.int64)
        n = np.array([x.n for x in mults], dtype=np.int64)
        return cls(m, n, int(zero_point), int(qmin), int(qmax))

    @property
    def per_channel(self) -> bool:
        return self.m.size > 1

    @property
    def shift_only(self) -> bool:
        return bool(np.all(self.m & (self.m - 1) == 0))


@dataclass(eq=False)
class Op:
    """Base: the ONNX node it came from, its input and output tensor names."""

    node: str
    onnx_op: str
    inputs: list[str]
    output: str

    @property
    def kind(self) -> str:
        return type(self).__name__


@dataclass(eq=False)
class ConvOp(Op):
    """NCHW conv; ``weight`` int8 [OC, IC/group, KH, KW] (zero point 0), ``bias`` int32 [OC];
    ``acc64``: the accumulator is int64 (an int16 input whose sums could overflow int32)."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    acc64: bool = False
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)  # top, left, bottom, right
    dilations: tuple[int, int] = (1, 1)
    group: int = 1
    in_zp: int = 0
    requant: Requant | None = None


@dataclass(eq=False)
class DenseOp(Op):
    """``out[…, o] = Σ_k (x[…, k] − zp) · weight[o, k] + bias[o]`` over the last axis (a [1, K] vector or
    every row of a [1, …, K] tensor: a Linear applied per token or per pixel); ``weight`` int8 [OUT, K];
    ``acc64`` as ``ConvOp``'s."""

    weight: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))
    bias: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    acc64: bool = False
    in_zp: int = 0
    requant: Requant | None = None


@dataclass(eq=False)
class AddOp(Op):
    """``out = Requant(m_a·(a − za) + m_b·(b − zb))``: both inputs rescaled to one shift ``n``."""

    in_zps: tuple[int, int] = (0, 0)
    in_mults: tuple[int, int] = (1, 1)
    requant: Requant | None = None


@dataclass(eq=False)
class AddConstantOp(Op):
    """``out = Requant(m·(x − zp) + constant)``: a constant tensor (ViT's position embedding) added in the
    accumulator's fixed point, ``constant`` = round(c / s_out · 2^n) per element (int64, ``x``'s shape),
    ``m`` = s_x / s_out · 2^n, one shift ``n``."""

    in_zp: int = 0
    in_mult: int = 1
    constant: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    requant: Requant | None = None


@dataclass(eq=False)
class ConstantOp(Op):
    """A constant tensor's integer codes (ViT's class token, quantized by its Q); no inputs."""

    values: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int8))


@dataclass(eq=False)
class PoolOp(Op):
    """Max or average pooling (GlobalAveragePool: the kernel is the whole plane); a ceil-mode max pool
    arrives with its end pads grown to take the partial window."""

    mode: str = "max"
    kernel: tuple[int, int] = (1, 1)
    strides: tuple[int, int] = (1, 1)
    pads: tuple[int, int, int, int] = (0, 0, 0, 0)
    in_zp: int = 0
    requant: Requant | None = None  # average: M = s_in / (s_out · window); max: s_in / s_out


@dataclass(eq=False)
class ElementwiseOp(Op):
    """Relu/Clip (clamp), Flatten/Reshape (copy): ``out = Requant(x − zp)`` element by element."""

    in_zp: int = 0
    requant: Requant | None = None


@dataclass(eq=False)
class LookupOp(Op):
    """Sigmoid / Tanh: ``out = table[x + 128]``, the function of each of the 256 input codes quantized
    by QuantizeLinear's rule, so it equals DQ → op → Q in float code for code. The input is int8; the
    table holds the output's type (int8 or int16)."""

    table: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int8))


@dataclass(eq=False)
class MatMulOp(Op):
    """A product of two activations: ``out[t, i, j] = Requant(Σ_k (a[t, i, k] − za)·(b[t, k, j] − zb))``
    over the ``batch`` matrices ``t`` of ``a`` [.., M, K] and ``b`` [.., K, N] (attention's q·kᵀ and
    p·v); ``acc64``: the sum needs int64 (int16 inputs)."""

    in_zps: tuple[int, int] = (0, 0)
    batch: int = 1
    rows: int = 1
    depth: int = 1
    cols: int = 1
    acc64: bool = False
    requant: Requant | None = None


@dataclass(eq=False)
class SoftmaxOp(Op):
    """Softmax over one axis of an int8 tensor: a row is ``length`` values ``stride`` apart (stride 1: the
    last axis; YOLOv8's DFL normalizes axis 1 of [1, 16, 4, anchors]). With ``d = max − x`` (the
    row's largest code minus each code, 0..255) and ``e = table[d]`` (``round(2^frac_bits ·
    exp(−s·d))``, ``s`` the input scale):

        out = Requant(round_div(e · gain, (Σ_row e) · 2^gain_shift))     gain ≈ 2^gain_shift / s_out

    ``round_div`` rounds half away from zero; the requantization only adds the output zero point and
    saturates (multiplier 1, shift 0)."""

    length: int = 1
    stride: int = 1
    frac_bits: int = 20
    table: np.ndarray = field(default_factory=lambda: np.zeros(256, np.int64))
    gain: int = 1
    gain_shift: int = 0
    requant: Requant | None = None


@dataclass(eq=False)
class LayerNormOp(Op):
    """LayerNormalization over the last axis (``length`` values a row), in integers only. With
    ``v = x − zp``, ``S1 = Σv``, ``S2 = Σv²`` over the row and ``d = length·v − S1`` (= length·(v − mean)):

        r   = max(1, isqrt((length·S2 − S1² + eps_term) · 4^root_shift))   # √(length²·(var + ε/s²))
        y   = round_div(d · 2^(frac_bits + root_shift), r)                     # normalized · 2^frac_bits
        out = Requant(y · gamma[i] + beta[i])                                  # shift-only, one shift

    ``round_div`` rounds half away from zero; ``isqrt`` is the floor square root. ``gamma``/``beta`` hold
    γ/s_out and β/s_out in fixed point (``requant.n`` fractional bits) per position of the row."""

    length: int = 1
    in_zp: int = 0
    eps_term: int = 0
    root_shift: int = 0
    frac_bits: int = 16
    gamma: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    beta: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    requant: Requant | None = None


@dataclass(eq=False)
class MulOp(Op):
    """``out = Requant((a − za)·(b − zb))``, ``M = s_a·s_b / s_out``; ``b`` is ``a``'s shape or one value
    per channel ([1, C, 1, …]: squeeze-excitation's gate), broadcast over the rest. ``wide``: the product
    needs int64 (two int16 inputs)."""

    in_zps: tuple[int, int] = (0, 0)
    per_channel_b: bool = False
    wide: bool = False
    requant: Requant | None = None


@dataclass(eq=False)
class ConcatOp(Op):
    """Concatenation on ``axis``; each input is requantized to the output's scale (a copy when equal)."""

    axis: int = 1
    in_zps: tuple[int, ...] = ()
    requants: tuple[Requant, ...] = ()


@dataclass(eq=False)
class TransposeOp(Op):
    """Axis permutation (``perm[0] == 0``: the batch stays first), requantized element by element."""

    perm: tuple[int, ...] = ()
    in_zp: int = 0
    requant: Requant | None = None


@dataclass(eq=False)
class SliceOp(Op):
    """A strided window: output index ``i < sizes[a]`` on axis ``a`` reads input ``starts[a] + i·steps[a]``
    (steps ≥ 1), requantized element by element. ``cuts_first``: the window cuts axis 0 too (then not a
    batch axis: a Gather of q, k or v from torch's stacked [3, …] projection); else axis 0 is whole.
    The output may drop axes of size 1 (a Gather of one index)."""

    cuts_first: bool = False
    starts: tuple[int, ...] = ()
    steps: tuple[int, ...] = ()
    sizes: tuple[int, ...] = ()
    in_zp: int = 0
    requant: Requant | None = None


@dataclass(eq=False)
class UpsampleOp(Op):
    """Nearest-neighbour upsampling by whole factors: output index ``i`` on axis ``a`` reads input index
    ``i // factors[a]`` (ONNX Resize, mode nearest, where its coordinate rule gives exactly that),
    requantized element by element. ``factors[0]`` is 1: the batch is not resized."""

    factors: tuple[int, ...] = ()
    in_zp: int = 0
    requant: Requant | None = None


@dataclass
class IOBinding:
    """A graph input or output: the float ONNX tensor and the int program tensor behind it."""

    onnx_name: str
    tensor: str


@dataclass
class Program:
    """An integer program: tensors, ops in execution order, graph inputs and outputs; ``islands``: the
    QDQ model's float nodes it computes in integers, each with how."""

    name: str
    tensors: dict[str, TensorInfo]
    ops: list[Op]
    inputs: list[IOBinding]
    outputs: list[IOBinding]
    notes: list[str] = field(default_factory=list)
    islands: dict[str, str] = field(default_factory=dict)
    q_outputs: dict[str, str] = field(default_factory=dict)  # tensor → the QDQ model's Q output of its codes

    @property
    def batched(self) -> bool:
        """Axis 0 of every tensor is the batch, of size 1, so the reference may run many samples at once.
        A program that moves or cuts axis 0 (torch's sequence-first attention) or holds a constant
        tensor runs one sample at a time."""
        moved = any((isinstance(op, TransposeOp) and op.perm[0] != 0) or isinstance(op, ConstantOp)
                    or (isinstance(op, SliceOp) and op.cuts_first) for op in self.ops)
        return not moved and all(info.shape[0] == 1 for info in self.tensors.values())

    def macs(self) -> list[int]:
        """Multiply-accumulates of each op (batch 1), in op order."""
        out: list[int] = []
        for op in self.ops:
            size = self.tensors[op.output].size
            if isinstance(op, ConvOp):
                out.append(size * int(np.prod(op.weight.shape[1:])))
            elif isinstance(op, DenseOp):
                out.append(size * int(op.weight.shape[1]))
            elif isinstance(op, MatMulOp):
                out.append(size * op.depth)
            else:
                out.append(0)
        return out
