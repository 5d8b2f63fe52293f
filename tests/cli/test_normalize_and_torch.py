"""Normalization on reference nets (≤ 1e-5 vs ORT, no BN left), the PyTorch entry, pass infrastructure."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from dsqc.driver.pipeline import load_and_normalize
from dsqc.verify import session

torch = pytest.importorskip("torch")

from dsqc.models.export import zoo_model  # noqa: E402
from dsqc.models.mnist import DEMO_MODEL_PATH  # noqa: E402

FOLD_TARGETS = {"Conv", "ConvTranspose", "Gemm", "MatMul"}


def _relative_diff(original: onnx.ModelProto, normalized: onnx.ModelProto, feeds: dict) -> float:
    ref = session(original, optimize=False).run(None, feeds)
    got = session(normalized, optimize=False).run(None, feeds)
    pairs = zip(ref, got, strict=True)
    return max(float(np.max(np.abs(r - g)) / max(np.max(np.abs(r)), 1e-12)) for r, g in pairs)


@pytest.mark.parametrize("name", ["resnet_block", "inverted_residual", "convtranspose_decoder",
                                  "tiny_transformer", "mnist"])
def test_normalized_matches_original(name: str, tmp_path_factory: pytest.TempPathFactory) -> None:
    path = DEMO_MODEL_PATH if name == "mnist" else zoo_model(name, tmp_path_factory.mktemp("zoo"))
    original = onnx.load(path)
    normalized = load_and_normalize(Path(path)).model
    inp = original.graph.input[0]
    shape = [d.dim_value or 2 for d in inp.type.tensor_type.shape.dim]
    feeds = {inp.name: np.random.default_rng(0).normal(size=shape).astype(np.float32)}
    assert _relative_diff(original, normalized, feeds) <= 1e-5
    producers = {out: n.op_type for n in normalized.graph.node for out in n.output}
    for node in normalized.graph.node:
        if node.op_type == "BatchNormalization":
            assert producers.get(node.input[0]) not in FOLD_TARGETS, f"BN after a foldable op in {name}"
    if any(n.op_type == "BatchNormalization" for n in original.graph.node):
        assert len(normalized.graph.node) < len(original.graph.node)


def test_from_torch_and_export_cli(tmp_path: Path) -> None:
    from dsqc.torch_export import from_torch

    module = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4), torch.nn.ReLU()).eval()
    proto = from_torch(module, torch.randn(1, 3, 8, 8))
    assert proto.graph.input[0].name == "input"
    factory = tmp_path / "tiny_factory.py"
    factory.write_text("import torch\n\ndef make():\n"
                       "    m = torch.nn.Sequential(torch.nn.Linear(4, 2)).eval()\n"
                       "    return m, torch.randn(1, 4)\n")
    out = tmp_path / "exported.onnx"
    proc = subprocess.run([sys.executable, "-m", "dsqc", "export", "tiny_factory:make", "-o", str(out)],
                          capture_output=True, text=True, cwd=tmp_path, timeout=300,
                          env={**__import__("os").environ, "PYTHONPATH": str(tmp_path)})
    assert proc.returncode == 0, proc.stderr
    onnx.checker.check_model(onnx.load(out))
    inspect = subprocess.run([sys.executable, "-m", "dsqc", "inspect", str(out)], capture_output=True,
                             text=True, timeout=120)
    assert inspect.returncode == 0 and "Gemm" in inspect.stdout and "float" in inspect.stdout
