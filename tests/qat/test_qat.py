"""dsqc.qat: prepare on a plan, a short training run, export, and ``dsqc build`` keeping the scales."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

import dsqc.qat as qat  # noqa: E402
from dsqc.driver.build_folder import read_build  # noqa: E402
from dsqc.driver.build_types import BuildRequest  # noqa: E402
from dsqc.driver.cli import main  # noqa: E402
from dsqc.driver.pipeline import build  # noqa: E402
from dsqc.qat.locate import export_graph  # noqa: E402
from dsqc.quant.from_qdq import split_qdq  # noqa: E402
from dsqc.quant.spec import QuantPlan, QuantSpec  # noqa: E402
from dsqc.torch_export import from_torch  # noqa: E402


def small_cnn(seed: int = 0) -> nn.Module:
    """Conv → BN → ReLU → MaxPool → Flatten → Linear → ReLU → Linear, BN with non-trivial statistics."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Conv2d(1, 6, 3, padding=1), nn.BatchNorm2d(6), nn.ReLU(), nn.MaxPool2d(2),
                          nn.Flatten(), nn.Linear(6 * 4 * 4, 16), nn.ReLU(), nn.Linear(16, 4))
    with torch.no_grad():
        bn = model[1]
        bn.running_mean.uniform_(-0.2, 0.2)
        bn.running_var.uniform_(0.5, 1.5)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.uniform_(-0.2, 0.2)
    return model.eval()


class _ConvRelu(nn.Module):
    """Conv then ``torch.relu`` in the forward: the Relu's output is no leaf module's output."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.conv(x)) + 0.5


def _data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    x = rng.normal(0, 1, (n, 1, 8, 8)).astype(np.float32)
    top, left = x[:, 0, :4].mean(axis=(1, 2)) > 0, x[:, 0, :, :4].mean(axis=(1, 2)) > 0
    return x, top.astype(np.int64) + 2 * left.astype(np.int64)


@pytest.fixture(scope="module")
def planned(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    """The small CNN exported as dsqc exports modules, and its hls plan (bias correction off)."""
    root = tmp_path_factory.mktemp("qat")
    module = small_cnn()
    example = torch.from_numpy(_data(8, 1)[0])
    model_path = root / "small.onnx"
    from_torch(module, example, path=model_path)
    x, labels = _data(96, 2)
    np.savez(root / "calib.npz", input=x, labels=labels)
    recipe = root / "recipe.toml"
    recipe.write_text("[boosters]\nbias_correction = false\n")
    out = root / "ptq"
    build(BuildRequest(model=model_path, target="hls", out_dir=out, calib=str(root / "calib.npz"),
                       eval_samples=16, recipe=recipe, measure_latency=False,
                       backend_options={"csim": False}))
    return {"root": root, "module": module, "example": example, "model": model_path, "build": out,
            "calib": root / "calib.npz", "plan": read_build(out).plan, "x": x, "labels": labels}


def test_prepare_puts_fake_quant_on_exactly_the_plan_tensors(planned: dict) -> None:
    plan = planned["plan"]
    prepared = qat.prepare(planned["module"], planned["build"], planned["example"])
    assert set(prepared.dsqc_qat.points) == set(plan.tensors)
    fakes = [q for q in qat.quantizers(prepared) if isinstance(q, qat.FakeQuantize)]
    biases = [q for q in qat.quantizers(prepared) if isinstance(q, qat.BiasFakeQuantize)]
    assert len(biases) == sum(s.dtype == "int32" for s in plan.tensors.values()) == 3
    # MaxPool/Flatten share their input's quantizer (one scale on the target): fewer modules than tensors
    non_bias = {n for n, s in plan.tensors.items() if s.dtype != "int32"}
    assert 0 < len(fakes) <= len(non_bias)
    # untrained, the export is the plan itself: same tensors, same scales and zero points
    path = qat.export(prepared, planned["example"], planned["root"] / "untrained.qat.onnx")
    specs = split_qdq(onnx.load(path)).specs
    assert set(specs) == set(plan.tensors)
    for name, spec in plan.tensors.items():
        assert np.array_equal(specs[name].scale, spec.scale), name
        assert np.array_equal(specs[name].zero_point, spec.zero_point), name
    # and the module computes what ONNX Runtime computes on that QDQ model
    import onnxruntime as ort

    options = ort.SessionOptions()  # reference Q/DQ semantics: fused u8s8 kernels saturate without VNNI
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    got = session.run(None, {"input": planned["x"][:32]})[0]
    with torch.no_grad():
        expected = prepared(torch.from_numpy(planned["x"][:32])).numpy()
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert not np.allclose(expected, planned["module"](torch.from_numpy(planned["x"][:32])).detach().numpy(),
                           atol=1e-5)  # fake quantization is on


def _train(prepared: nn.Module, x: np.ndarray, labels: np.ndarray, steps: int) -> None:
    opt = torch.optim.Adam(prepared.parameters(), lr=2e-4)
    prepared.train()
    for step in range(steps):
        idx = slice((step * 16) % 80, (step * 16) % 80 + 16)
        opt.zero_grad()
        loss = nn.functional.cross_entropy(prepared(torch.from_numpy(x[idx])), torch.from_numpy(labels[idx]))
        loss.backward()
        opt.step()
    prepared.eval()


def test_short_training_changes_learnable_scales_only(planned: dict) -> None:
    learned = qat.prepare(planned["module"], planned["plan"], planned["example"], learn_scales=True)
    fixed = qat.prepare(planned["module"], planned["plan"], planned["example"])
    before = {id(q): q.spec().scale.copy() for m in (learned, fixed) for q in qat.quantizers(m)
              if isinstance(q, qat.FakeQuantize)}
    for module in (learned, fixed):
        _train(module, planned["x"], planned["labels"], steps=10)
    moved = [not np.array_equal(q.spec().scale, before[id(q)]) for q in qat.quantizers(learned)
             if isinstance(q, qat.FakeQuantize)]
    assert all(moved)
    assert all(np.array_equal(q.spec().scale, before[id(q)]) for q in qat.quantizers(fixed)
               if isinstance(q, qat.FakeQuantize))
    assert not torch.allclose(learned.float_module()[5].weight, planned["module"][5].weight)


def test_export_then_build_keeps_the_trained_scales(planned: dict, tmp_path: Path) -> None:
    prepared = qat.prepare(planned["module"], planned["build"], planned["example"], learn_scales=True)
    _train(prepared, planned["x"], planned["labels"], steps=10)
    path = qat.export(prepared, planned["example"], tmp_path / "small.qat.onnx")
    trained = split_qdq(onnx.load(path)).specs
    assert any(not np.array_equal(trained[n].scale, s.scale) for n, s in planned["plan"].tensors.items())
    # onnx target: the artifact's own Q/DQ read back (uint8 activations there: zero point + 128)
    out = tmp_path / "onnx"
    assert main(["build", str(path), "--target", "onnx", "--calib", str(planned["calib"]), "--no-latency",
                 "-q", "-o", str(out)]) == 0
    artifact = split_qdq(onnx.load(out / "small.qat.int8.onnx")).specs
    assert set(trained) - set(artifact) == {"output"}  # onnx leaves a Gemm's graph output in float
    for name, spec in artifact.items():
        spec = trained[name]
        assert np.array_equal(artifact[name].scale, spec.scale), name
        shift = 128 if (spec.dtype, artifact[name].dtype) == ("int8", "uint8") else 0
        assert np.array_equal(artifact[name].zero_point, spec.zero_point + shift), name
    # hls target, verified against the original FP32 model: the plan in report.json holds them too
    out = tmp_path / "hls"
    assert main(["build", str(path), "--target", "hls", "--calib", str(planned["calib"]), "--no-latency",
                 "-q", "-B", "csim=false", "--fp32-reference", str(planned["model"]), "-o", str(out)]) == 0
    plan = read_build(out).plan
    for name, spec in trained.items():
        assert np.array_equal(plan.tensors[name].scale, spec.scale), name


def test_a_module_that_does_not_match_the_plan_is_one_clear_error(planned: dict) -> None:
    other = nn.Sequential(nn.Conv2d(1, 3, 3), nn.ReLU(), nn.Flatten(), nn.Linear(108, 4)).eval()
    with pytest.raises(qat.QatError, match="is not in dsqc's export of Sequential: the plan was built from "
                                           "another model"):
        qat.prepare(other, planned["plan"], planned["example"])
    functional = _ConvRelu().eval()
    graph = export_graph(functional, planned["example"], None, None)
    relu = next(n for n in graph.graph.node if n.op_type == "Relu")
    plan = QuantPlan({relu.output[0]: QuantSpec("int8", np.float32(0.02), np.int64(-128))})
    with pytest.raises(qat.QatError, match=rf"'{relu.output[0]}' \(Relu node '{relu.name}'\) is not the "
                                           "output of any leaf module"):
        qat.prepare(functional, plan, planned["example"])
    with pytest.raises(qat.QatError, match="was not prepared"):
        qat.export(planned["module"], planned["example"], planned["root"] / "never.onnx")
    assert not (planned["root"] / "never.onnx").exists()


def test_fp32_reference_must_match_the_model(planned: dict, tmp_path: Path,
                                             capsys: pytest.CaptureFixture[str]) -> None:
    other = tmp_path / "other.onnx"
    from_torch(small_cnn(), planned["example"], path=other, output_names=["scores"])
    code = main(["build", str(planned["model"]), "--target", "onnx", "--calib", str(planned["calib"]),
                 "--fp32-reference", str(other), "-o", str(tmp_path / "out")])
    assert code == 2
    assert "--fp32-reference" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
