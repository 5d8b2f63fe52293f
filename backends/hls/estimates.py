"""First-order sizing numbers for the hardware team: MACs, weight bytes, buffers, latency.

Latency model (cycles, one inference): each conv/dense output takes ``ceil(K / P)`` cycles (the
reduction loop is pipelined at II=1 with ``P`` MACs per iteration), each pooling output takes one
cycle per window tap, element-wise layers and the port copies take ``ceil(size / P)`` cycles.
Pipeline fill, loop entry and memory stalls are ignored: expect the tool's number to be higher.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import numpy as np

from dsqc.integer import (
    AddConstantOp,
    ConstantOp,
    ConvOp,
    DenseOp,
    LayerNormOp,
    LookupOp,
    MatMulOp,
    Op,
    PoolOp,
    Program,
    SoftmaxOp,
)


@dataclass
class LayerEstimate:
    node: str
    op: str
    output_shape: tuple[int, ...]
    macs: int
    weight_bytes: int
    cycles: int


@dataclass
class Estimates:
    parallelism: int
    clock_mhz: float
    macs: int
    weight_bytes: int
    activation_bytes: int
    largest_buffer: tuple[str, int]
    cycles: int
    layers: list[LayerEstimate] = field(default_factory=list)

    @property
    def latency_us(self) -> float:
        return self.cycles / self.clock_mhz

    def to_dict(self) -> dict[str, object]:
        data = asdict(self)
        data["latency_us"] = round(self.latency_us, 3)
        data["largest_buffer"] = {"tensor": self.largest_buffer[0], "bytes": self.largest_buffer[1]}
        data["layers"] = [{k: v for k, v in asdict(layer).items()} for layer in self.layers]
        return data


def weight_bytes(op: Op) -> int:
    """Constant bytes of one layer: int8 weights, int32 biases and multipliers, int8 shifts, tables."""
    if isinstance(op, LookupOp):
        return int(op.table.nbytes)
    if isinstance(op, LayerNormOp):
        return int(op.gamma.nbytes + op.beta.nbytes)
    if isinstance(op, SoftmaxOp):
        return 4 * int(op.table.size)
    if isinstance(op, ConstantOp):
        return int(op.values.nbytes)
    if isinstance(op, AddConstantOp):
        return int(op.constant.nbytes)
    if not isinstance(op, ConvOp | DenseOp):
        return 0
    assert op.requant is not None
    channels = op.requant.m.size if op.requant.per_channel else 0
    return int(op.weight.size + 4 * op.bias.size + 5 * channels)


def _cycles(op: Op, program: Program, parallelism: int) -> int:
    out = program.tensors[op.output]
    if isinstance(op, ConvOp):
        return out.size * math.ceil(int(np.prod(op.weight.shape[1:])) / parallelism)
    if isinstance(op, DenseOp):
        return out.size * math.ceil(op.weight.shape[1] / parallelism)
    if isinstance(op, PoolOp):
        return out.size * op.kernel[0] * op.kernel[1]
    if isinstance(op, MatMulOp):
        return out.size * math.ceil(op.depth / parallelism)
    if isinstance(op, SoftmaxOp):  # the row maximum, the sum, the divisions
        return 3 * out.size
    if isinstance(op, LayerNormOp):  # one pass for the sums, one to normalize, a 32-step root per row
        return 2 * out.size + 32 * (out.size // op.length)
    return math.ceil(out.size / parallelism)


def estimate(program: Program, parallelism: int, clock_mhz: float) -> Estimates:
    macs = program.macs()
    layers = [LayerEstimate(op.node, op.onnx_op, program.tensors[op.output].shape, mac, weight_bytes(op),
                            _cycles(op, program, parallelism))
              for op, mac in zip(program.ops, macs, strict=True)]
    sizes = {name: info.nbytes for name, info in program.tensors.items()}
    largest = max(sizes.items(), key=lambda kv: (kv[1], kv[0]))
    io = sum(math.ceil(program.tensors[b.tensor].size / parallelism)
             for b in [*program.inputs, *program.outputs])
    return Estimates(parallelism, clock_mhz, sum(macs), sum(x.weight_bytes for x in layers),
                     sum(sizes.values()), largest, sum(x.cycles for x in layers) + io, layers)
