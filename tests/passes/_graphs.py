"""Shared helpers for pass tests: build small ONNX models in code, run them in ORT, compare.

Tolerance for every FP32 pass: max|got - ref| / max|ref| <= 1e-5 (``TOL``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from dsqc.ir import Model
from dsqc.pass_infra import Pass, PassResult

TOL = 1e-5
FLOAT = TensorProto.FLOAT


def rng(seed: int = 0) -> np.random.Generator:
    return np.random.default_rng(seed)


def randn(shape: Sequence[int], seed: int = 0, scale: float = 1.0) -> np.ndarray:
    return (rng(seed).standard_normal(tuple(shape)) * scale).astype(np.float32)


def value(name: str, shape: Sequence[int | str] | None, dtype: int = FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name=name)


def bn_params(prefix: str, channels: int, seed: int = 1) -> list[onnx.TensorProto]:
    """Initializers ``{prefix}_scale/_bias/_mean/_var`` with a non-trivial spread."""
    gen = rng(seed)
    return [
        init(f"{prefix}_scale", gen.uniform(0.5, 1.5, channels).astype(np.float32)),
        init(f"{prefix}_bias", gen.standard_normal(channels).astype(np.float32)),
        init(f"{prefix}_mean", gen.standard_normal(channels).astype(np.float32)),
        init(f"{prefix}_var", gen.uniform(0.5, 2.0, channels).astype(np.float32)),
    ]


def bn_node(prefix: str, x: str, y: str, epsilon: float = 1e-5) -> onnx.NodeProto:
    names = [f"{prefix}_{k}" for k in ("scale", "bias", "mean", "var")]
    return helper.make_node(
        "BatchNormalization", [x, *names], [y], name=prefix, epsilon=epsilon
    )


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = 17,
    check: bool = True,
) -> onnx.ModelProto:
    """A shape-inferred model; ``check=False`` skips the checker (e.g. for unknown-rank inputs)."""
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    model = onnx.shape_inference.infer_shapes(model, strict_mode=check)
    if check:
        onnx.checker.check_model(model, full_check=True)
    return model


def run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Run with ORT's own graph optimizations off, so ORT does not do the pass's work itself."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(
        proto.SerializeToString(), options, providers=["CPUExecutionProvider"]
    )
    return [np.asarray(v) for v in sess.run(None, feeds)]


def rel_error(ref: np.ndarray, got: np.ndarray) -> float:
    scale = float(np.max(np.abs(ref))) if ref.size else 0.0
    diff = float(np.max(np.abs(got.astype(np.float64) - ref))) if ref.size else 0.0
    return diff / scale if scale > 0 else diff


def apply(pass_: Pass, proto: onnx.ModelProto) -> tuple[PassResult, onnx.ModelProto]:
    model = Model.from_proto(proto)
    result = pass_(model)
    return result, result.model.to_proto()


def ops(proto: onnx.ModelProto) -> list[str]:
    return [node.op_type for node in proto.graph.node]


def canonical(proto: onnx.ModelProto) -> bytes:
    """The model as dsqc would export it untouched: the baseline for 'graph unchanged'."""
    return Model.from_proto(proto).to_proto().SerializeToString()


def check_pass(
    pass_: Pass, proto: onnx.ModelProto, feeds: dict[str, np.ndarray]
) -> onnx.ModelProto:
    """Apply ``pass_``: it must modify, stay valid, match ORT numerically and be idempotent."""
    result, after = apply(pass_, proto)
    assert result.modified, "pass reported no change"
    onnx.checker.check_model(after, full_check=True)
    assert [o.name for o in after.graph.output] == [o.name for o in proto.graph.output]
    for ref, got in zip(run(proto, feeds), run(after, feeds), strict=True):
        assert ref.shape == got.shape and ref.dtype == got.dtype
        assert rel_error(ref, got) <= TOL, rel_error(ref, got)
    again, _ = apply(pass_, after)
    assert not again.modified, "second run still modified the graph"
    return after


def check_refused(pass_: Pass, proto: onnx.ModelProto) -> None:
    """``pass_`` must leave the graph exactly as it was and say so."""
    result, after = apply(pass_, proto)
    assert not result.modified
    assert after.SerializeToString() == canonical(proto)
