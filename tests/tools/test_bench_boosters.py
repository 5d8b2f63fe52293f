"""tools/bench boosters and transformers modules: the booster study end to end on the smallest model,
and weight bytes counted as stored (int4 packed)."""

from __future__ import annotations

import json
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("torch")

from tools.bench.boosters import main
from tools.bench.transformers import weight_bytes


def test_booster_study_smoke(tmp_path: Path) -> None:
    out = tmp_path / "out"
    argv = ["--models", "inverted_residual", "--quick", "--out", str(out), "--workdir", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((out / "boosters.json").read_text())["models"]["inverted_residual"]["rows"]
    assert set(rows) == {f"{w} | {b}" for w in ("per-channel", "per-tensor")
                         for b in ("baseline", "cle", "bias correction")}
    assert all(r["sqnr_db"] > 20 for r in rows.values())
    assert "| per-tensor | cle |" in (out / "BOOSTERS.md").read_text()


def test_weight_bytes_count_int4_packed() -> None:
    w4 = np.zeros((64, 32), ml_dtypes.int4)
    inits = [numpy_helper.from_array(w4, "w4"), numpy_helper.from_array(np.ones((2, 32), np.float32), "s4"),
             numpy_helper.from_array(np.ones((32, 8), np.float32), "w32")]
    nodes = [helper.make_node("DequantizeLinear", ["w4", "s4"], ["w"], axis=0, block_size=32),
             helper.make_node("MatMul", ["x", "w"], ["m"]), helper.make_node("MatMul", ["m", "w32"], ["y"])]
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    assert weight_bytes(model) == 64 * 32 // 2 + 2 * 32 * 4 + 32 * 8 * 4


@pytest.mark.slow
def test_cle_and_bias_correction_recover_an_imbalanced_mobilenet(tmp_path: Path) -> None:
    argv = ["--models", "mobilenetv2_relu_spread", "--quick", "--out", str(tmp_path / "out"),
            "--workdir", str(tmp_path)]
    assert main(argv) == 0
    rows = json.loads((tmp_path / "out" / "boosters.json").read_text())["models"]["mobilenetv2_relu_spread"]
    sqnr = {k: v["sqnr_db"] for k, v in rows["rows"].items()}
    for weights in ("per-channel", "per-tensor"):
        assert sqnr[f"{weights} | cle"] > sqnr[f"{weights} | baseline"] + 15
        assert sqnr[f"{weights} | cle + bias correction"] > sqnr[f"{weights} | cle"] + 3
