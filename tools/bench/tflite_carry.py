"""Shrink float32 ``.tflite`` files for the trip to the timing host (``python -m tools.bench.tflite_carry``).

The device machine takes 64 MiB per call; ResNet-18's float32 file alone is 47 MB of random-looking
weights that do not compress. XNNPACK's dense float32 kernels do the same work whatever the weight values,
so for timing the low mantissa bits of every float32 constant can go: they are zeroed in place (the
flatbuffer is not rebuilt: same graph, same tensors, same offsets) and the file is xz-compressed.
``--keep 16`` keeps bfloat16 precision (relative error < 0.4 %). The int8 files are never touched.
"""

from __future__ import annotations

import argparse
import lzma
import sys
from pathlib import Path

import numpy as np


def truncate_float_constants(data: bytearray, keep_bits: int) -> int:
    """Zero the low ``32 - keep_bits`` bits of every float32 constant buffer in ``data``; bytes changed."""
    from ai_edge_litert import schema_py_generated as fb

    model = fb.Model.GetRootAsModel(data, 0)
    mask = np.uint32((0xFFFFFFFF << (32 - keep_bits)) & 0xFFFFFFFF)
    view = np.frombuffer(data, np.uint8)
    base = view.__array_interface__["data"][0]
    touched = 0
    for s in range(model.SubgraphsLength()):
        sub = model.Subgraphs(s)
        for t in range(sub.TensorsLength()):
            tensor = sub.Tensors(t)
            if tensor.Type() != fb.TensorType.FLOAT32 or tensor.Buffer() == 0:
                continue
            buf = model.Buffers(tensor.Buffer())
            if buf.DataLength() == 0 or buf.DataLength() % 4:
                continue  # empty, or stored outside the flatbuffer (offset/size): leave it
            raw = buf.DataAsNumpy()
            start = raw.__array_interface__["data"][0] - base
            words = view[start:start + raw.size].view(np.uint32)
            words &= mask
            touched += raw.size
    return touched


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--out", type=Path, required=True, help="folder for <name>.xz")
    parser.add_argument("--keep", type=int, default=16, help="high bits kept of each float32 weight")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for f in args.files:
        data = bytearray(f.read_bytes())
        n = truncate_float_constants(data, args.keep)
        packed = lzma.compress(bytes(data), preset=1)
        (args.out / f"{f.name}.xz").write_bytes(packed)
        print(f"{f.name}: {n / 1e6:.1f} MB of float32 weights truncated to {args.keep} bits, "
              f"{len(data) / 1e6:.1f} → {len(packed) / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
