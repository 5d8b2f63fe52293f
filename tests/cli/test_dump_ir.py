"""``--dump-ir``, ``--check-each-pass`` and the ``-v`` pass timings cover every pass of a build: the
normalization, the boosters, InsertQDQ and bias correction (issue 14, item 2)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnx_graphsurgeon as gs
import pytest

from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.errors import PassError
from dsqc.ir import Model
from dsqc.models.mnist import DEMO_MODEL_PATH
from dsqc.pass_infra import PassResult
from dsqc.passes.bias_correction import BiasCorrection


def test_dump_ir_lists_boosters_and_insert_qdq_in_run_order(tmp_path: Path) -> None:
    recipe = tmp_path / "boosters.toml"
    recipe.write_text("[boosters]\ncle = true\nsmoothquant = 0.5\n")
    dump, out = tmp_path / "D", tmp_path / "O"
    proc = subprocess.run(
        [sys.executable, "-m", "dsqc", "-v", "build", str(DEMO_MODEL_PATH), "--target", "onnx", "--calib",
         "mnist", "--calib-samples", "64", "--no-latency", "--recipe", str(recipe), "--dump-ir", str(dump),
         "--check-each-pass", "-o", str(out)], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    files = sorted(p.name for p in dump.iterdir())
    assert files == ["001_FuseConvBatchNorm.onnx", "002_SmoothQuant.onnx", "003_InsertQDQ.onnx",
                     "004_BiasCorrection.onnx"]
    for name in files:
        onnx.checker.check_model(onnx.load(dump / name))
    qdq_ops = {n.op_type for n in onnx.load(dump / files[2]).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= qdq_ops
    timed = [line.split()[3] for line in proc.stderr.splitlines()
             if line.startswith("INFO dsqc.pass_infra: pass ")]
    for name in ("FuseConvBatchNorm", "EqualizeCrossLayer", "SmoothQuant", "InsertQDQ", "BiasCorrection"):
        assert name in timed, (name, timed)
    assert timed.index("EqualizeCrossLayer") < timed.index("InsertQDQ") < timed.index("BiasCorrection")
    passes_ms = json.loads((out / "build_info.json").read_text())["volatile_metrics"]["passes_ms"]
    expected = {"FoldConstants", "EqualizeCrossLayer", "SmoothQuant", "InsertQDQ", "BiasCorrection"}
    assert expected <= passes_ms.keys()


def test_check_each_pass_catches_a_broken_booster(conv_bn_path: Path, conv_bn_npz: Path, tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    """Bias correction runs deep inside the build (``quant.boosters``): the checker still sees it."""
    def broken(self: BiasCorrection, model: Model) -> PassResult:  # the Conv now reads a tensor nobody writes
        conv = next(n for n in model.graph.nodes if n.op == "Conv")
        conv.inputs[0] = gs.Variable("ghost", np.float32, None)
        return PassResult(model, True)

    monkeypatch.setattr(BiasCorrection, "call", broken)
    request = BuildRequest(model=conv_bn_path, target="onnx", out_dir=tmp_path / "out",
                           calib=str(conv_bn_npz), measure_latency=False, check_each_pass=True)
    with pytest.raises(PassError, match="pass BiasCorrection: left an invalid graph"):
        build(request)
    assert not (tmp_path / "out").exists()


def test_multi_target_build_dumps_each_target_into_its_own_folder(conv_bn_path: Path, conv_bn_npz: Path,
                                                                  tmp_path: Path) -> None:
    """Targets build concurrently with --no-latency: each has its own pass context and dump folder; the
    shared normalization is dumped once, by the target that ran it."""
    proc = subprocess.run(
        [sys.executable, "-m", "dsqc", "build", str(conv_bn_path), "--target", "onnx,trt", "--calib",
         str(conv_bn_npz), "--no-latency", "--dump-ir", str(tmp_path / "D"), "-o", str(tmp_path / "O")],
        capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr
    dumped = {t: sorted(p.name.split("_", 1)[1] for p in (tmp_path / "D" / t).iterdir())
              for t in ("onnx", "trt")}
    for names in dumped.values():
        assert "InsertQDQ.onnx" in names and "BiasCorrection.onnx" in names
    assert sum("FuseConvBatchNorm.onnx" in names for names in dumped.values()) == 1
