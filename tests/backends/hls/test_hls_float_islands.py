"""Float islands on ``hls``: what the planner leaves float between integer tensors — LayerNorm, GELU as
torch exports it (Div → Erf → Add → Mul → Mul, all of it float: one table), a Linear's bias Add, a
layer-scale Mul by a per-channel constant — becomes integer code: ``LayerNormOp``, a 256-entry table run
through ORT, the DenseOp's bias, a depthwise 1×1 conv. A ConvNeXt block in small builds, gcc's csim is
bit-exact with the integer reference, and each op alone is within 1 LSB of ORT running the QDQ model."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from _integer_models import quantize
from onnx import TensorProto, helper, numpy_helper

from dsqc.backends.hls.profile import hls_profile
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.pipeline import build
from dsqc.driver.report import format_result
from dsqc.errors import UnsupportedError
from dsqc.integer import LayerNormOp, lower
from dsqc.integer.compare import per_op_with_ort
from dsqc.integer.fixedpoint import isqrt, round_div
from dsqc.integer.ops import ConvOp, DenseOp, LookupOp

needs_gcc = pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")),
                               reason="gcc/make/nm missing")


def convnext_block(path: Path, channels: int = 8, bias: bool = True) -> Path:
    """x[N,C,6,6] → depthwise 7×7 Conv → Transpose to NHWC → LayerNorm → Linear (MatMul + Add) → GELU
    (erf) → Linear → Transpose to NCHW → layer scale (Mul by a [C,1,1] constant) → + x → 1×1 Conv →
    y: torchvision's CNBlock with its exported op sequence."""
    rng = np.random.default_rng(0)
    c, hidden = channels, 4 * channels

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3, mean: float = 0.0) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(mean, scale, shape).astype(np.float32), name)

    def const(name: str, value: float) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(value, np.float32), name)

    inits = [w("wd", (c, 1, 7, 7)), w("bd", (c,), 0.1), w("gamma", (c,), 0.2, 1.0), w("beta", (c,), 0.1),
             w("w1", (c, hidden)), w("b1", (hidden,), 0.2), w("w2", (hidden, c), 0.2), w("b2", (c,), 0.1),
             numpy_helper.from_array(rng.uniform(0.2, 0.8, (c, 1, 1)).astype(np.float32) *
                                     rng.choice([-1, 1], (c, 1, 1)).astype(np.float32), "layer_scale"),
             w("wo", (3, c, 1, 1)), w("bo", (3,), 0.1),
             const("sqrt2", 1.4142135381698608), const("one", 1.0), const("half", 0.5)]
    h1 = "h1b" if bias else "h1"
    h2 = "h2b" if bias else "h2"
    nodes = [
        helper.make_node("Conv", ["x", "wd", "bd"], ["d"], name="dwconv", group=c, pads=[3, 3, 3, 3]),
        helper.make_node("Transpose", ["d"], ["dt"], name="to_nhwc", perm=[0, 2, 3, 1]),
        helper.make_node("LayerNormalization", ["dt", "gamma", "beta"], ["n"], name="norm", axis=-1,
                         epsilon=1e-6),
        helper.make_node("MatMul", ["n", "w1"], ["h1"], name="fc1"),
        *([helper.make_node("Add", ["b1", "h1"], ["h1b"], name="fc1_bias")] if bias else []),
        helper.make_node("Div", [h1, "sqrt2"], ["g0"], name="gelu_div"),
        helper.make_node("Erf", ["g0"], ["g1"], name="gelu_erf"),
        helper.make_node("Add", ["g1", "one"], ["g2"], name="gelu_add"),
        helper.make_node("Mul", [h1, "g2"], ["g3"], name="gelu_mul"),
        helper.make_node("Mul", ["g3", "half"], ["g"], name="gelu_half"),
        helper.make_node("MatMul", ["g", "w2"], ["h2"], name="fc2"),
        *([helper.make_node("Add", ["b2", "h2"], ["h2b"], name="fc2_bias")] if bias else []),
        helper.make_node("Transpose", [h2], ["t"], name="to_nchw", perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["layer_scale", "t"], ["s"], name="layer_scale_mul"),
        helper.make_node("Add", ["s", "x"], ["r"], name="residual"),
        helper.make_node("Conv", ["r", "wo", "bo"], ["y"], name="head"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", c, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 6, 6])
    model = helper.make_model(helper.make_graph(nodes, "cnblock", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _build(model: Path, calib: Path, out: Path, **options: object) -> BuildResult:
    return build(BuildRequest(model=model, target="hls", out_dir=out, calib=str(calib),
                              measure_latency=False, repair=False,
                              backend_options={"tb_vectors": 8, **options}))


def _calib(tmp_path: Path, channels: int = 8) -> Path:
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).normal(size=(48, channels, 6, 6)).astype(np.float32))
    return calib


@needs_gcc
@pytest.mark.parametrize("bits", [8, 16])
def test_convnext_block_is_bit_exact(tmp_path: Path, bits: int) -> None:
    model = convnext_block(tmp_path / "cnblock.onnx")
    result = _build(model, _calib(tmp_path), tmp_path / "out", activation_bits=bits)
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["vectors"] >= 6
    assert hls["lsb_vs_ort"]["per_op_float_requant"]["max_lsb"] <= 1
    assert result.metrics["verification"]["outputs"]["y"]["sqnr_db"] > 25
    source = (tmp_path / "out" / "hls" / "firmware" / "cnblock.c").read_text()
    assert "static uint64_t dsqc_isqrt(uint64_t v)" in source and "dsqc_round_div(d, root)" in source
    assert source.count("_table[x[i] + 128]") == 1  # the whole GELU: one table, one rounding
    assert result.metrics["float_nodes"] == {}  # float in the QDQ model only: the C is integer throughout
    summary = format_result(result)
    assert ("float in the QDQ model, integer in the C: 7 nodes (256-entry table (Div → Erf → Add → Mul → "
            "Mul) 5, integer LayerNorm 1, per-channel scale (depthwise 1x1 conv) 1; report.json: "
            "metrics.hls.islands)") in summary, summary
    assert result.plan is not None
    if bits == 16:  # the tables read int8 codes; the LayerNorm and the Linears int16
        dtypes = {name: spec.dtype for name, spec in result.plan.tensors.items()}
        assert dtypes["h1b"] == "int8" and dtypes["dt"] == "int16" and dtypes["n"] == "int16"


def test_islands_lower_to_integer_ops(tmp_path: Path) -> None:
    """The op each island becomes, and each op's output within 1 LSB of ORT's DQ → float ops → Q."""
    fp32 = onnx.load(convnext_block(tmp_path / "cnblock.onnx"))
    feeds = {"x": np.random.default_rng(2).normal(size=(16, 8, 6, 6)).astype(np.float32)}
    qdq, _ = quantize(fp32, hls_profile(), feeds)
    program = lower(qdq, "cnblock")
    by_node = {op.node: op for op in program.ops}
    assert isinstance(by_node["norm"], LayerNormOp) and by_node["norm"].length == 8
    assert isinstance(by_node["fc1"], DenseOp)
    assert program.tensors[by_node["fc1"].output].shape == (1, 6, 6, 32)
    assert np.any(by_node["fc1"].bias != 0)  # the Add's constant, in int32
    gelu = by_node["gelu_half"]  # the planner keeps the whole GELU float: one table
    assert isinstance(gelu, LookupOp) and gelu.onnx_op == "Div → Erf → Add → Mul → Mul"
    scale = by_node["layer_scale_mul"]
    assert isinstance(scale, ConvOp) and scale.group == 8 and set(np.unique(scale.weight)) == {-1, 1}
    assert not {"fc1_bias", "gelu_div", "gelu_add", "gelu_mul"} & set(by_node)
    per_op = per_op_with_ort(qdq, program, feeds)
    assert max(stats["max_lsb"] for stats in per_op.values()) <= 1, per_op


def test_layernorm_integer_math_matches_float() -> None:
    """isqrt is the exact floor root and round_div rounds half away from zero; a LayerNorm row in
    integers equals the float formula within the output step."""
    values = np.array([0, 1, 2, 3, 4, 15, 16, 17, 2**40 - 1, 2**40, 2**61 + 12345], np.int64)
    roots = isqrt(values)
    assert all(int(r) ** 2 <= int(v) < (int(r) + 1) ** 2 for r, v in zip(roots, values, strict=True))
    assert round_div(np.array([5, -5, 4, -4, 6, -6]), np.array(4)).tolist() == [1, -1, 1, -1, 2, -2]


def test_unsupported_island_is_refused_by_name(tmp_path: Path) -> None:
    """A Mul by a constant that varies along the last axis of an NHWC tensor has no integer form here:
    one error names the node and says what the program tabulates."""
    fp32 = onnx.load(convnext_block(tmp_path / "cnblock.onnx"))
    graph = fp32.graph
    scale = next(i for i in graph.initializer if i.name == "layer_scale")
    along_width = np.linspace(0.5, 1.5, 6, dtype=np.float32).reshape(1, 6)
    scale.CopyFrom(numpy_helper.from_array(along_width, scale.name))
    feeds = {"x": np.random.default_rng(2).normal(size=(8, 8, 6, 6)).astype(np.float32)}
    qdq, _ = quantize(fp32, hls_profile(), feeds)
    with pytest.raises(UnsupportedError, match="node 'layer_scale_mul' \\(Mul\\): constant of shape"):
        lower(qdq, "cnblock")


@needs_gcc
def test_concat_with_a_constant_is_integer(tmp_path: Path) -> None:
    """A Concat of a constant and a tensor (a learned token, a fixed channel) with no Add after it: the
    constant becomes integer codes on the output's grid, the concatenation a copy; csim bit-exact."""
    rng = np.random.default_rng(0)
    token = numpy_helper.from_array(rng.normal(0, 0.5, (1, 2, 6, 6)).astype(np.float32), "token")
    w = numpy_helper.from_array(rng.normal(0, 0.3, (3, 6, 1, 1)).astype(np.float32), "w")
    nodes = [helper.make_node("Relu", ["x"], ["r"], name="relu"),
             helper.make_node("Concat", ["token", "r"], ["c"], name="join", axis=1),
             helper.make_node("Conv", ["c", "w"], ["y"], name="head")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 6, 6])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3, 6, 6])
    graph = helper.make_graph(nodes, "join", [x], [y], [token, w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "join.onnx")
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.random.default_rng(1).normal(size=(32, 4, 6, 6)).astype(np.float32))
    result = _build(tmp_path / "join.onnx", calib, tmp_path / "out")
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact"
    assert hls["lsb_vs_ort"]["per_op_float_requant"]["max_lsb"] <= 1
    assert result.metrics["hls"]["islands"]["join"] == "concatenation with a constant"
    assert result.metrics["float_nodes"] == {}
    source = (tmp_path / "out" / "hls" / "firmware" / "join.c").read_text()
    assert "/* Constant node join" in source and "/* Concat node join" in source
