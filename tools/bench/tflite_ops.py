"""Compare ``.tflite`` files op by op (``python -m tools.bench.tflite_ops A.tflite B.tflite``).

For each file: op types, fused activations, conv padding/stride, weight quantization (per-channel or
per-tensor), activation dtypes and shapes, and which ops LiteRT's default XNNPACK delegate leaves to the
builtin kernels (one delegate node per op, ``experimental_disable_delegate_node_fusion``). With two files,
the op sequences are aligned and every difference is printed: what to look at when one is slower.
"""

from __future__ import annotations

import argparse
import collections
import difflib
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_ACT = {0: "", 1: "RELU", 2: "RELU_N1_TO_1", 3: "RELU6", 4: "TANH", 5: "SIGN_BIT"}
_PAD = {0: "SAME", 1: "VALID"}


@dataclass(frozen=True)
class OpInfo:
    kind: str
    detail: str          # options that change the kernel: activation, padding, strides, …
    io: str              # activation dtypes and shapes
    weights: str         # constant inputs: dtype, shape, per-channel / per-tensor

    def line(self) -> str:
        return " ".join(p for p in (self.kind, self.detail, self.io, self.weights) if p)


def _schema() -> Any:
    from ai_edge_litert import schema_py_generated as fb

    return fb


def _names(fb: Any) -> dict[int, str]:
    return {v: k for k, v in vars(fb.BuiltinOperator).items() if not k.startswith("_")}


def _dtype(fb: Any, code: int) -> str:
    return {v: k for k, v in vars(fb.TensorType).items() if not k.startswith("_")}[code].lower()


def _shape(t: Any) -> list[int]:
    return [] if t.shape is None else [int(d) for d in t.shape]


def _quant(t: Any) -> str:
    q = t.quantization
    if q is None or q.scale is None or len(q.scale) == 0:
        return ""
    return f"per-channel[{len(q.scale)}]" if len(q.scale) > 1 else "per-tensor"


def _detail(op: Any) -> str:
    o = op.builtinOptions
    if o is None:
        return ""
    parts = []
    act = getattr(o, "fusedActivationFunction", 0)
    if act:
        parts.append(f"act={_ACT.get(act, act)}")
    if hasattr(o, "padding"):
        parts.append(_PAD.get(o.padding, str(o.padding)))
    if hasattr(o, "strideH"):
        parts.append(f"s{o.strideH}x{o.strideW}")
    if getattr(o, "keepDims", None) is not None and hasattr(o, "keepDims"):
        parts.append(f"keep={bool(o.keepDims)}")
    if getattr(o, "keepNumDims", False):
        parts.append("keepNumDims")
    return ",".join(parts)


def read_ops(path: Path) -> list[OpInfo]:
    """The ops of the first subgraph in execution order."""
    fb = _schema()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(path.read_bytes(), 0))
    names = _names(fb)
    sub = model.subgraphs[0]
    const = {i for i, t in enumerate(sub.tensors) if model.buffers[t.buffer].data is not None}
    out = []
    for op in sub.operators:
        code = model.operatorCodes[op.opcodeIndex]
        kind = names.get(max(code.builtinCode, code.deprecatedBuiltinCode), str(code.builtinCode))
        acts, weights = [], []
        for i in op.inputs:
            if i < 0:
                continue
            t = sub.tensors[i]
            desc = f"{_dtype(fb, t.type)}{_shape(t)}"
            if i in const:
                weights.append(f"{desc}{_quant(t) and ':' + _quant(t)}")
            else:
                acts.append(desc)
        outs = [f"{_dtype(fb, sub.tensors[i].type)}{_shape(sub.tensors[i])}" for i in op.outputs]
        out.append(OpInfo(kind, _detail(op), f"{'+'.join(acts)}->{'+'.join(outs)}",
                          " w=" + ",".join(weights) if weights else ""))
    return out


def undelegated(path: Path) -> collections.Counter[str]:
    """Ops the default XNNPACK delegate does not take (they run as LiteRT builtin kernels)."""
    from ai_edge_litert.interpreter import Interpreter

    it = Interpreter(model_path=str(path), num_threads=1, experimental_disable_delegate_node_fusion=True)
    it.allocate_tensors()
    ops = it._get_ops_details()
    produced = {int(t) for o in ops if o["op_name"] == "DELEGATE" for t in o["outputs"]}
    return collections.Counter(o["op_name"] for o in ops if o["op_name"] != "DELEGATE"
                               and not all(int(t) in produced for t in o["outputs"]))


def summary(path: Path) -> str:
    ops = read_ops(path)
    kinds = collections.Counter(o.kind for o in ops)
    acts = collections.Counter(o.detail.split(",")[0] for o in ops if o.detail.startswith("act="))
    per_ch = sum("per-channel" in o.weights for o in ops)
    per_t = sum("per-tensor" in o.weights and "per-channel" not in o.weights for o in ops)
    return (f"{path.name}: {len(ops)} ops {dict(kinds)}\n  fused activations {dict(acts)}; "
            f"weights per-channel in {per_ch} ops, per-tensor only in {per_t}; not delegated to XNNPACK: "
            f"{dict(undelegated(path)) or 'none'}")


def diff(a: Path, b: Path, limit: int = 60) -> list[str]:
    """Aligned op-sequence differences between two files."""
    la, lb = [o.line() for o in read_ops(a)], [o.line() for o in read_ops(b)]
    lines = []
    for tag, i1, i2, j1, j2 in difflib.SequenceMatcher(a=la, b=lb, autojunk=False).get_opcodes():
        if tag == "equal":
            continue
        lines += [f"- {x}" for x in la[i1:i2]] + [f"+ {x}" for x in lb[j1:j2]] + [""]
    return lines[:limit] + ([f"... {len(lines) - limit} more lines"] if len(lines) > limit else [])


def isolate(path: Path, folder: Path) -> int:
    """One model per op (a PAD goes with the op it feeds, which XNNPACK fuses it into), written as
    ``folder/<stem>.op<NNN>.<KIND>.tflite`` so that per-op latencies can be timed on another host."""
    import flatbuffers

    fb = _schema()
    model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(path.read_bytes(), 0))
    sub = model.subgraphs[0]
    names = _names(fb)
    kinds = [names[max(model.operatorCodes[o.opcodeIndex].builtinCode,
                       model.operatorCodes[o.opcodeIndex].deprecatedBuiltinCode)] for o in sub.operators]
    groups: list[list[int]] = []
    for i in range(len(kinds)):
        if groups and kinds[groups[-1][-1]] in ("PAD", "PADV2") and len(groups[-1]) == 1:
            groups[-1].append(i)
        else:
            groups.append([i])
    folder.mkdir(parents=True, exist_ok=True)
    for n, group in enumerate(groups):
        ops = [sub.operators[i] for i in group]
        produced = {t for o in ops for t in o.outputs}
        used = sorted({t for o in ops for t in (*o.inputs, *o.outputs) if t >= 0})
        remap = {old: new for new, old in enumerate(used)}
        buffers = [fb.BufferT()]
        tensors = []
        for old in used:
            t = sub.tensors[old]
            if t.buffer and model.buffers[t.buffer].data is not None:
                buffers.append(model.buffers[t.buffer])
                t.buffer = len(buffers) - 1
            else:
                t.buffer = 0
            tensors.append(t)
        new_ops = []
        for o in ops:
            o.inputs = [remap[t] if t >= 0 else -1 for t in o.inputs]
            o.outputs = [remap[t] for t in o.outputs]
            new_ops.append(o)
        const = {remap[t] for t in used if tensors[remap[t]].buffer}
        s = fb.SubGraphT()
        s.tensors, s.operators = tensors, new_ops
        inner = {remap[p] for p in produced}
        s.inputs = sorted({t for o in new_ops for t in o.inputs if t >= 0 and t not in const | inner})
        s.outputs = [new_ops[-1].outputs[0]]
        m = fb.ModelT()
        m.version, m.operatorCodes, m.subgraphs, m.buffers = 3, model.operatorCodes, [s], buffers
        builder = flatbuffers.Builder(1024)
        builder.Finish(m.Pack(builder), file_identifier=b"TFL3")
        (folder / f"{path.stem}.op{n:03d}.{kinds[group[-1]]}.tflite").write_bytes(builder.Output())
        model = fb.ModelT.InitFromObj(fb.Model.GetRootAsModel(path.read_bytes(), 0))  # fresh objects
        sub = model.subgraphs[0]
    return len(groups)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("files", type=Path, nargs="+")
    parser.add_argument("--limit", type=int, default=60, help="diff lines shown")
    parser.add_argument("--isolate", type=Path, help="write one model per op of each file into this folder")
    args = parser.parse_args(argv)
    if args.isolate:
        for f in args.files:
            print(f"{f.name}: {isolate(f, args.isolate)} single-op models in {args.isolate}")
        return 0
    for f in args.files:
        print(summary(f))
    if len(args.files) == 2:
        print(f"\ndiff (- {args.files[0].name}, + {args.files[1].name}):")
        print("\n".join(diff(*args.files, limit=args.limit)) or "identical op sequences")
    return 0


if __name__ == "__main__":
    sys.exit(main())
