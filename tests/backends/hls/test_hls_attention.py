"""Attention on ``hls`` in a batch-first layout (BERT's export: [1, heads, L, d]): MatMul of two int8
activations (``MatMulOp``, int32 sums) and Softmax over the last axis in integers (``SoftmaxOp``: the row
maximum, a 256-entry exp table, an integer sum and one rounded division). gcc's csim is bit-exact with the
integer reference and each op alone is within 1 LSB of ORT running the QDQ model."""

from __future__ import annotations

import dataclasses
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from _integer_models import quantize
from onnx import TensorProto, helper, numpy_helper

from dsqc.backends.hls.profile import hls_profile
from dsqc.backends.tflite.profile import tflite_profile
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.driver.report import format_result
from dsqc.errors import UnsupportedError
from dsqc.integer import lower
from dsqc.integer.compare import per_op_with_ort
from dsqc.integer.ops import MatMulOp, SoftmaxOp
from dsqc.quant.recipe import parse_recipe

needs_gcc = pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")),
                               reason="gcc/make/nm missing")

L, D, HEADS = 8, 16, 2


def attention_block(path: Path, scaled: bool = True, biased: bool = False) -> Path:
    """x[N, L, D] → q, k, v Linears → [1, heads, L, d] → softmax(q·kᵀ / √d)·v → heads merged → Linear →
    + x → LayerNorm → y (``scaled=False``: the Softmax reads q·kᵀ itself; ``biased``: a constant
    [1, heads, L, L] is added to the scores first, Swin's relative position bias)."""
    rng = np.random.default_rng(0)
    d = D // HEADS

    def w(name: str, shape: tuple[int, ...], scale: float = 0.3) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    def ints(name: str, values: list[int]) -> onnx.TensorProto:
        return numpy_helper.from_array(np.array(values, np.int64), name)

    inits = [w("wq", (D, D)), w("wk", (D, D)), w("wv", (D, D)), w("wo", (D, D)), w("bq", (D,), 0.1),
             w("bk", (D,), 0.1), w("bv", (D,), 0.1), w("bo", (D,), 0.1),
             numpy_helper.from_array(np.ones(D, np.float32), "gamma"),
             numpy_helper.from_array(np.zeros(D, np.float32), "beta"),
             numpy_helper.from_array(np.array(1 / np.sqrt(d), np.float32), "scale"),
             ints("heads", [1, L, HEADS, d]), ints("merged", [1, L, D]), w("rel_bias", (1, HEADS, L, L), 1.0)]
    scores = "s" if scaled else "s0"
    nodes = []
    for p in "qkv":
        nodes += [helper.make_node("MatMul", ["x", f"w{p}"], [f"{p}0"], name=f"{p}_proj"),
                  helper.make_node("Add", [f"{p}0", f"b{p}"], [f"{p}1"], name=f"{p}_bias"),
                  helper.make_node("Reshape", [f"{p}1", "heads"], [f"{p}2"], name=f"{p}_split")]
    nodes += [
        helper.make_node("Transpose", ["q2"], ["q"], name="q_heads", perm=[0, 2, 1, 3]),
        helper.make_node("Transpose", ["k2"], ["kt"], name="k_heads_t", perm=[0, 2, 3, 1]),
        helper.make_node("Transpose", ["v2"], ["v"], name="v_heads", perm=[0, 2, 1, 3]),
        helper.make_node("MatMul", ["q", "kt"], ["s0"], name="scores"),
        *([helper.make_node("Mul", ["s0", "scale"], ["s"], name="scaled")] if scaled else []),
        *([helper.make_node("Add", [scores, "rel_bias"], ["sb"], name="bias")] if biased else []),
        helper.make_node("Softmax", ["sb" if biased else scores], ["p"], name="softmax", axis=-1),
        helper.make_node("MatMul", ["p", "v"], ["a0"], name="context"),
        helper.make_node("Transpose", ["a0"], ["a1"], name="merge_t", perm=[0, 2, 1, 3]),
        helper.make_node("Reshape", ["a1", "merged"], ["a"], name="merge"),
        helper.make_node("MatMul", ["a", "wo"], ["o0"], name="out_proj"),
        helper.make_node("Add", ["o0", "bo"], ["o"], name="out_bias"),
        helper.make_node("Add", ["o", "x"], ["r"], name="residual"),
        helper.make_node("LayerNormalization", ["r", "gamma", "beta"], ["y"], name="norm", axis=-1),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, L, D])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, L, D])
    model = helper.make_model(helper.make_graph(nodes, "attention", [x], [y], inits),
                              opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def _feeds(count: int, seed: int) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(seed).normal(size=(count, 1, L, D)).astype(np.float32)}


def test_attention_lowers_to_integer_matmul_and_softmax(tmp_path: Path) -> None:
    fp32 = onnx.load(attention_block(tmp_path / "attention.onnx"))
    feeds = {"x": _feeds(1, 2)["x"][0]}
    qdq, _ = quantize(fp32, hls_profile(), {"x": _feeds(1, 3)["x"][0]})
    program = lower(qdq, "attention")
    by_node = {op.node: op for op in program.ops}
    assert isinstance(by_node["scores"], MatMulOp) and isinstance(by_node["context"], MatMulOp)
    assert program.tensors[by_node["scores"].output].shape == (1, HEADS, L, L)
    softmax = by_node["softmax"]
    assert isinstance(softmax, SoftmaxOp) and softmax.table[0] == 2**softmax.frac_bits
    per_op = per_op_with_ort(qdq, program, feeds)
    assert max(stats["max_lsb"] for stats in per_op.values()) <= 1, per_op


@needs_gcc
@pytest.mark.parametrize("biased", [False, True])
def test_attention_block_is_bit_exact(tmp_path: Path, biased: bool) -> None:
    """The Softmax reads an int8 tensor: the scaled scores' table, or (``biased``) the bias Add's
    ``AddConstantOp``."""
    model = attention_block(tmp_path / "attention.onnx", biased=biased)
    calib = tmp_path / "calib.npz"
    np.savez(calib, x=np.concatenate([_feeds(1, s)["x"][0] for s in range(32)]))
    result = build(BuildRequest(model=model, target="hls", out_dir=tmp_path / "out", calib=str(calib),
                                measure_latency=False, repair=False, backend_options={"tb_vectors": 8}))
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["vectors"] >= 6
    assert hls["lsb_vs_ort"]["per_op_float_requant"]["max_lsb"] <= 1
    assert result.metrics["verification"]["outputs"]["y"]["sqnr_db"] > 20
    assert result.metrics["float_nodes"] == {}
    source = (tmp_path / "out" / "hls" / "firmware" / "attention.c").read_text()
    assert "_exp[" in source and "dsqc_round_div(" in source
    assert ("/* Add node bias" in source) == biased
    readme = (tmp_path / "out" / "hls" / "README.md").read_text()
    assert "- Softmax: the row's largest code" in readme and "- LayerNorm: int64 row sums" in readme


def test_softmax_input_stays_int8_under_int16_activations(tmp_path: Path) -> None:
    """The exp table has 256 entries: with int16 activations the planner keeps the Softmax input int8;
    a plan that makes it int16 anyway is refused naming the node."""
    fp32 = onnx.load(attention_block(tmp_path / "attention.onnx", scaled=False))
    calib = {"x": _feeds(8, 3)["x"][0]}
    program = lower(quantize(fp32, hls_profile(16), calib)[0], "attention")
    softmax = next(op for op in program.ops if op.node == "softmax")
    assert not program.tensors[softmax.inputs[0]].wide and program.tensors[softmax.output].wide
    tables_only = dataclasses.replace(hls_profile(16), eight_bit_inputs=frozenset({"Sigmoid", "Tanh"}))
    with pytest.raises(UnsupportedError, match=r"node 'softmax' \(Softmax\): input .* is int16"):
        lower(quantize(fp32, tables_only, calib)[0], "attention")


def test_residual_stream_into_layernorm_is_int16_on_hls(tmp_path: Path) -> None:
    """The residual Add a LayerNorm reads runs with int16 activations on ``hls`` by default (its inputs
    and sum int16, the LayerNorm reading int16); ``residual_bits=8`` and a recipe's precision keep it
    int8, and targets without int16 kernels never widen it."""
    fp32 = onnx.load(attention_block(tmp_path / "attention.onnx"))
    calib = {"x": _feeds(8, 3)["x"][0]}
    qdq, plan = quantize(fp32, hls_profile(), calib)
    assert plan.nodes["residual"].label == "int16" and "residual stream" in plan.nodes["residual"].reason
    assert [plan.tensors[t].dtype for t in ("o", "x", "r")] == ["int16"] * 3
    assert plan.tensors["q1"].dtype == "int8" and not any(
        d.wide for name, d in plan.nodes.items() if name != "residual")
    program = lower(qdq, "attention")
    norm = next(op for op in program.ops if op.node == "norm")
    assert program.tensors[norm.inputs[0]].wide and not program.tensors[norm.output].wide
    assert max(s["max_lsb"] for s in per_op_with_ort(qdq, program, {"x": _feeds(1, 2)["x"][0]}).values()) <= 1
    assert quantize(fp32, hls_profile(residual_bits=8), calib)[1].nodes["residual"].label == "int8"
    asked = parse_recipe({"override": [{"nodes": "residual", "precision": "int8"}]})
    assert quantize(fp32, hls_profile(), calib, asked)[1].nodes["residual"].label == "int8"
    assert quantize(fp32, tflite_profile(True), calib)[1].nodes["residual"].label != "int16"


def tiny_vit(path: Path) -> Path:
    """ViT in small, exported from torch like torchvision's: patch Conv, class token (``expand`` to the
    batch) concatenated, position embedding added, one encoder block (LayerNorm, ``nn.MultiheadAttention``
    with ``batch_first=True``, which torch exports sequence-first: transposes of the batch axis, the q/k/v
    projection unflattened, stacked and gathered back, GELU MLP), LayerNorm, the class token's head."""
    torch = pytest.importorskip("torch")
    from dsqc.torch_export import from_torch

    class TinyViT(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            dim = 16
            self.patch = torch.nn.Conv2d(3, dim, 4, stride=4)
            self.cls = torch.nn.Parameter(torch.randn(1, 1, dim) * 0.5)
            self.pos = torch.nn.Parameter(torch.randn(1, 5, dim) * 0.5)
            self.ln_1 = torch.nn.LayerNorm(dim)
            self.attention = torch.nn.MultiheadAttention(dim, 2, batch_first=True)
            self.ln_2 = torch.nn.LayerNorm(dim)
            self.mlp = torch.nn.Sequential(torch.nn.Linear(dim, 32), torch.nn.GELU(),
                                           torch.nn.Linear(32, dim))
            self.ln = torch.nn.LayerNorm(dim)
            self.head = torch.nn.Linear(dim, 5)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            x = self.patch(x).flatten(2).transpose(1, 2)
            x = torch.cat([self.cls.expand(x.shape[0], -1, -1), x], dim=1) + self.pos
            y = self.ln_1(x)
            x = x + self.attention(y, y, y, need_weights=False)[0]
            x = x + self.mlp(self.ln_2(x))
            return self.head(self.ln(x)[:, 0])

    onnx.save(from_torch(TinyViT().eval(), torch.zeros(1, 3, 8, 8)), path)
    return path


@needs_gcc
def test_torch_vit_block_is_bit_exact(tmp_path: Path) -> None:
    """torch's sequence-first attention moves the batch axis: the program runs one sample at a time, the
    C loops over those axes too, and the class token and position embedding are integer constants."""
    model = tiny_vit(tmp_path / "vit.onnx")
    ops = {n.op_type for n in onnx.load(model).graph.node}
    assert {"Gather", "Squeeze", "Unsqueeze", "Softmax", "Expand"} <= ops
    images = np.random.default_rng(1).normal(size=(48, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=images)
    result = build(BuildRequest(model=model, target="hls", out_dir=tmp_path / "out",
                                calib=str(tmp_path / "calib.npz"), measure_latency=False, repair=False,
                                backend_options={"tb_vectors": 8}))
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["vectors"] == 8
    assert hls["lsb_vs_ort"]["per_op_float_requant"]["max_lsb"] <= 1
    assert result.metrics["float_nodes"] == {}
    assert result.metrics["verification"]["outputs"]["output"]["sqnr_db"] > 15
    line = next(x for x in format_result(result).splitlines() if "integer in the C" in x)
    assert "integer LayerNorm 3" in line and "concatenation with a constant, constant added 2" in line, line
    assert "folded away for batch 1 6," in line  # the class token's Expand, the 1/√d scalars; not Shape
    source = (tmp_path / "out" / "hls" / "firmware" / "vit.c").read_text()
    assert "/* Constant node" in source and "_c[i]" in source  # class token; position embedding
    readme = (tmp_path / "out" / "hls" / "README.md").read_text()
    assert "int8 activations, int16 on " in readme  # the residual stream only
