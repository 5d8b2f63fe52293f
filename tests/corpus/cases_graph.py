"""Corpus: graphs that are broken, unusual, or everyday exports (opsets, subgraphs, dtypes, batch)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper

from . import _models as M
from ._corpus import Built, Case


def _onnx(name: str, proto: onnx.ModelProto, data: dict[str, np.ndarray] | None = None,
          *extra: str, target: str = "onnx") -> Callable[[Path], list[str]]:
    """A case writing ``proto`` (and ``data`` as an .npz) and building it for ``target``."""
    def make(tmp: Path) -> list[str]:
        path = M.save(proto, tmp / f"{name}.onnx")
        args = ["build", str(path), "--target", target, "--no-latency", *extra]
        if data is not None:
            args += ["--calib", str(M.npz(tmp / f"{name}.npz", **data))]
        return args
    return make


def _x(*shape: int) -> dict[str, np.ndarray]:
    return {"x": M.samples(shape)}


def _cycle() -> onnx.ModelProto:
    nodes = [helper.make_node("Add", ["x", "b"], ["a"], name="add_a"),
             helper.make_node("Relu", ["a"], ["b"], name="relu_b"),
             helper.make_node("Identity", ["a"], ["y"], name="out")]
    return M.model(nodes, [M.tensor("x", ["N", 4])], [M.tensor("y", ["N", 4])])


def _dangling() -> onnx.ModelProto:
    proto = M.mlp()
    del proto.graph.initializer[2]  # w2
    return proto


def _custom_domain() -> onnx.ModelProto:
    proto = M.mlp()
    proto.graph.node[1].domain = "com.acme"
    proto.graph.node[1].op_type = "FancyRelu"
    proto.opset_import.append(helper.make_opsetid("com.acme", 1))
    return proto


def _unknown_op() -> onnx.ModelProto:
    proto = M.mlp()
    proto.graph.node[1].op_type = "Relu6"
    return proto


def _huge_dim() -> onnx.ModelProto:
    nodes = [helper.make_node("Relu", ["x"], ["y"], name="relu")]
    return M.model(nodes, [M.tensor("x", ["N", 2**31])], [M.tensor("y", ["N", 2**31])])


def _unnamed_if() -> onnx.ModelProto:
    proto = M.if_model()
    for node in proto.graph.node:
        node.name = ""
    return proto


def _sequence_input() -> onnx.ModelProto:
    seq = helper.make_tensor_sequence_value_info("xs", TensorProto.FLOAT, ["N", 8])
    nodes = [helper.make_node("ConcatFromSequence", ["xs"], ["x"], name="stack", axis=0),
             *M.mlp().graph.node]
    return M.model(nodes, [seq], [M.tensor("y", ["N", 4])], list(M.mlp().graph.initializer))


def _input_is_output() -> onnx.ModelProto:
    proto = M.mlp()
    proto.graph.output.append(M.tensor("x", ["N", 8]))
    return proto


def _no_opset() -> onnx.ModelProto:
    proto = M.mlp()
    proto.opset_import[0].domain = "com.acme"
    return proto


_CONV = ("conv1", "conv2", "fc")
_CONV_OUT = ("{name}.int8.onnx", "report.json")


def _conv_case(case_id: str, category: str, proto: onnx.ModelProto, xfail: str | None = None,
               int8: tuple[str, ...] = _CONV, samples: int = 24) -> Case:
    name = case_id.replace("-", "_")
    return Case(case_id, category, _onnx(name, proto, _x(samples, 3, 8, 8)), xfail=xfail,
                built=Built((f"{name}.int8.onnx", "report.json"), int8))


def _names_unique(out: Path) -> None:
    proto = onnx.load(next(out.glob("*.int8.onnx")))
    names = [n.name for n in proto.graph.node]
    assert all(names) and len(set(names)) == len(names), names


def _gelu_at_17() -> onnx.ModelProto:
    proto = M.mlp()
    proto.graph.node[1].op_type = "Gelu"
    return proto


def _fp32(name: str, proto: onnx.ModelProto) -> Callable[[Path], list[str]]:
    return _onnx(name, proto, None, "--precision", "fp32")


E = "dsqc: error: {tmp}/"

CASES = [
    Case("cycle", "graph", _fp32("cycle", _cycle()),
         refuse=E + "cycle.onnx: graph has a cycle through nodes add_a -> relu_b -> add_a"),
    Case("dangling-input", "graph", _fp32("dangling", _dangling()),
         refuse=E + "dangling.onnx: node 'fc2' (Gemm) reads tensor 'w2' that no node, graph input or "
                    "initializer provides (missing initializer?)"),
    Case("custom-domain-op", "graph", _fp32("custom", _custom_domain()),
         refuse=E + "custom.onnx: node 'relu' uses op 'FancyRelu' from unknown domain 'com.acme'; dsqc "
                    "handles standard ONNX ops only: replace or remove it"),
    Case("unknown-standard-op", "graph", _fp32("relu6", _unknown_op()),
         refuse=E + "relu6.onnx: node 'relu' uses op 'Relu6', which is not an ONNX operator; replace it "
                    "with standard ops"),
    Case("op-newer-than-opset", "opset", _fp32("gelu", _gelu_at_17()),
         refuse=E + "gelu.onnx: node 'relu' uses op 'Gelu', which ONNX defines from opset 20 but the model "
                    "imports opset 17; export it again at opset 20 or newer"),
    Case("opset-99", "opset", _fp32("future", M.mlp(opset=99)),
         refuse=E + "future.onnx: opset 99 is newer than any ONNX release dsqc knows (up to "
                    f"{onnx.defs.onnx_opset_version()}); export the model again at opset 17"),
    Case("no-default-opset", "opset", _fp32("noopset", _no_opset()),
         refuse=E + "noopset.onnx: the model imports no standard ONNX opset (opset_import has no domain ''; "
                    "a truncated file or a broken export); export the model again"),
    Case("dim-0", "graph", _fp32("dim0", M.mlp(features=0)),
         refuse=E + "dim0.onnx: input 'x' has size 0 on axis 1 (shape [N,0]): it holds no data; re-export "
                    "the model with the real input size"),
    Case("dim-2^31", "graph", _fp32("huge", _huge_dim()),
         refuse=E + "huge.onnx: input 'x' has shape [N,2147483648]: over 2^31-1 elements per sample, "
                    "beyond the int32 indexing of ORT, TFLite and HLS kernels; re-export with the real size"),
    Case("sequence-input", "dtype", _fp32("seq_in", _sequence_input()),
         refuse=E + "seq_in.onnx: input 'xs' is a sequence, not a tensor; dsqc feeds tensors only: "
                    "re-export with tensor inputs"),
    Case("bfloat16-input", "dtype",
         _onnx("bf16", M.half_model(TensorProto.BFLOAT16), {"x_in": M.samples((20, 8))}),
         refuse=E + "bf16.onnx: input 'x_in' is bfloat16, which calibration data (numpy) cannot hold; "
                    "re-export the model with float32 or float16 inputs"),
    Case("no-inputs", "graph", _onnx("const", M.no_input_model(), None, "--calib", "random"),
         refuse="dsqc: error: calibration data 'random': the model has no inputs to feed"),
    Case("no-inputs-fp32", "graph", _fp32("const", M.no_input_model()),
         built=Built(("const.fp32.onnx", "report.json"))),
    Case("unnamed-nodes", "names", _onnx("unnamed", M.conv_net(names=[""] * 9), _x(24, 3, 8, 8)),
         built=Built(("unnamed.int8.onnx", "report.json"), ("Conv_0", "Conv_4", "Gemm_8"),
                     check=_names_unique)),
    Case("duplicate-names", "names", _onnx("dup", M.conv_net(names=["n"] * 9), _x(24, 3, 8, 8)),
         built=Built(("dup.int8.onnx", "report.json"), ("n", "n_4", "n_8"), check=_names_unique, warnings=(
             "WARNING dsqc.model_checks: {tmp}/dup.onnx: node names must be unique; renamed 8 duplicates: "
             "'n' -> 'n_1', 'n' -> 'n_2', 'n' -> 'n_3', 'n' -> 'n_4', 'n' -> 'n_5' ...",))),
    Case("unnamed-if", "subgraph", _onnx("unnamed_if", _unnamed_if(), _x(24, 8)),
         built=Built(("unnamed_if.int8.onnx", "report.json"), ("Gemm_0", "Gemm_4"))),
    Case("if", "subgraph", _onnx("if", M.if_model(), _x(24, 8)),
         built=Built(("if.int8.onnx", "report.json"), ("fc1", "fc2"))),
    Case("loop", "subgraph", _onnx("loop", M.loop_model(), _x(24, 8)),
         built=Built(("loop.int8.onnx", "report.json"), ("fc1", "fc2"))),
    Case("scan", "subgraph", _onnx("scan", M.scan_model(), _x(24, 16)),
         built=Built(("scan.int8.onnx", "report.json"), ("proj",))),
    *(_conv_case(f"opset-{v}", "opset", M.conv_net(opset=v)) for v in (7, 11, 13, 21, 23)),
    Case("int64-token-ids", "dtype",
         _onnx("ids", M.embedding_model(), {"ids": np.random.default_rng(0).integers(0, 50, (24, 6))}),
         built=Built(("ids.int8.onnx", "report.json"), ("proj",))),
    Case("float16-input", "dtype",
         _onnx("fp16", M.half_model(TensorProto.FLOAT16), {"x_in": M.samples((24, 8), dtype=np.float16)}),
         built=Built(("fp16.int8.onnx", "report.json"), ("fc1", "fc2"))),
    Case("string-input", "dtype",
         _onnx("text", M.string_model(), {"x_in": M.samples((24, 8)).astype(str)}),
         built=Built(("text.int8.onnx", "report.json"), ("fc1", "fc2"))),
    Case("input-is-also-output", "graph", _onnx("passthrough", _input_is_output(), _x(24, 8)),
         built=Built(("passthrough.int8.onnx", "report.json"), ("fc1", "fc2"), exact_outputs=("x",))),
    Case("dynamic-batch-and-sequence", "batch", _onnx("seq", M.sequence_model(), _x(24, 6, 16)),
         built=Built(("seq.int8.onnx", "report.json"), ("mm1", "mm2"))),
    _conv_case("static-batch-1", "batch", M.conv_net(batch=1)),
    # 30 samples: 6 held out, so neither calibration (batch 8) nor verification fits batch 4 by luck
    _conv_case("static-batch-4", "batch", M.conv_net(batch=4), samples=30),
]
