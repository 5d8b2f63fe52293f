"""Every zoo model exports to valid ONNX that onnxruntime runs like torch."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

torch = pytest.importorskip("torch")
onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

from dsqc.models.export import export_onnx, zoo_model  # noqa: E402
from dsqc.models.zoo import HAS_BATCHNORM, ZOO, conv_bn  # noqa: E402

RTOL = 1e-4


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("zoo")


def _session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _rel_err(got: np.ndarray, ref: np.ndarray) -> float:
    return float(np.abs(got - ref).max() / max(np.abs(ref).max(), 1e-12))


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zoo_entry_exports_and_matches_torch(name: str, cache_dir: Path) -> None:
    path = zoo_model(name, cache_dir)
    model = onnx.load(str(path))
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for n in model.graph.node}
    assert ("BatchNormalization" in ops) == (name in HAS_BATCHNORM)

    module, example = ZOO[name]()
    assert not module.training
    batch = torch.cat([example, torch.randn_like(example)])  # batch 2 exercises the dynamic axis
    with torch.no_grad():
        ref = module(batch).numpy()
    got = _session(path).run(["output"], {"input": batch.numpy()})[0]
    assert got.shape == ref.shape
    assert _rel_err(got, ref) < RTOL


def test_zoo_factories_are_deterministic() -> None:
    (m1, x1), (m2, x2) = ZOO["resnet_block"](), ZOO["resnet_block"]()
    assert torch.equal(x1, x2)
    for (k, a), b in zip(m1.state_dict().items(), m2.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_batchnorm_stats_are_non_trivial() -> None:
    module, _ = ZOO["resnet18_like"]()
    bns = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(bns) == 20
    for bn in bns:
        assert bn.running_mean.abs().max() > 0
        assert not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
        assert not torch.allclose(bn.weight, torch.ones_like(bn.weight))


def test_zoo_model_reuses_cache(cache_dir: Path) -> None:
    first = zoo_model("resnet_block", cache_dir)
    mtime = first.stat().st_mtime_ns
    assert zoo_model("resnet_block", cache_dir) == first
    assert first.stat().st_mtime_ns == mtime
    assert not list(cache_dir.glob("tmp*"))


def test_zoo_model_rejects_unknown_name(cache_dir: Path) -> None:
    with pytest.raises(KeyError, match="unknown zoo model"):
        zoo_model("no_such_model", cache_dir)


def test_fold_batchnorm_option_lets_exporter_fuse(tmp_path: Path) -> None:
    module, example = ZOO["resnet_block"]()
    kept = export_onnx(module, example, tmp_path / "kept.onnx", input_names=["x"], output_names=["y"])
    folded = export_onnx(
        module,
        example,
        tmp_path / "folded.onnx",
        input_names=["x"],
        output_names=["y"],
        fold_batchnorm=True,
    )
    ops = {p.stem: [n.op_type for n in onnx.load(str(p)).graph.node] for p in (kept, folded)}
    assert ops["kept"].count("BatchNormalization") == 2
    assert "BatchNormalization" not in ops["folded"]
    x = example.numpy()
    ref = _session(kept).run(None, {"x": x})[0]
    assert _rel_err(_session(folded).run(None, {"x": x})[0], ref) < RTOL


def test_export_static_batch_and_multiple_outputs(tmp_path: Path) -> None:
    class TwoHeads(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = conv_bn(3, 4)

        def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            y = self.body(x)
            return y, y.mean(dim=(2, 3))

    path = export_onnx(
        TwoHeads(),
        torch.randn(1, 3, 8, 8),
        tmp_path / "two.onnx",
        input_names=["x"],
        output_names=["fmap", "pooled"],
        dynamic_batch=False,
    )
    graph = onnx.load(str(path)).graph
    dims = {o.name: [d.dim_value for d in o.type.tensor_type.shape.dim] for o in graph.output}
    assert dims == {"fmap": [1, 4, 8, 8], "pooled": [1, 4]}
    assert [d.dim_value for d in graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 8]
