"""``--outputs``: build the part of a model that computes some of its tensors (a detector's head maps,
leaving its decode to the host), on every stage after loading: calibration, verification, the artifact,
``dsqc debug``."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.cli import main
from dsqc.errors import ModelError
from dsqc.model_cut import cut_at


def _head(path: Path) -> Path:
    """Conv → Relu → Conv ``maps`` → a DFL-like decode: a Softmax over axis 1, then a Mul by a constant
    varying along the last axis, which the integer program refuses → ``decoded``."""
    rng = np.random.default_rng(0)
    shapes = {"w1": (8, 3, 3, 3), "b1": (8,), "w2": (16, 8, 1, 1), "b2": (16,), "stride": (1, 1, 1, 8)}
    inits = [numpy_helper.from_array(rng.normal(0, 0.3, s).astype(np.float32), n) for n, s in shapes.items()]
    nodes = [helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
             helper.make_node("Conv", ["r1", "w2", "b2"], ["maps"], name="conv2"),
             helper.make_node("Softmax", ["maps"], ["p"], name="dfl", axis=1),
             helper.make_node("Mul", ["p", "stride"], ["decoded"], name="scale")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("decoded", TensorProto.FLOAT, ["N", 16, 8, 8])
    graph = helper.make_graph(nodes, "head", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.fixture
def head(tmp_path: Path) -> tuple[Path, Path]:
    data = tmp_path / "calib.npz"
    np.savez(data, x=np.random.default_rng(1).normal(size=(48, 3, 8, 8)).astype(np.float32))
    return _head(tmp_path / "head.onnx"), data


def test_cut_keeps_what_the_outputs_need(head: tuple[Path, Path]) -> None:
    model = onnx.load(head[0])
    cut = cut_at(model, ["maps"], "head.onnx")
    assert [o.name for o in cut.graph.output] == ["maps"] and [i.name for i in cut.graph.input] == ["x"]
    assert [n.name for n in cut.graph.node] == ["conv1", "relu1", "conv2"]
    assert cut.graph.output[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert cut_at(model, [], "head.onnx") is model
    with pytest.raises(ModelError, match=r"--outputs: head.onnx has no tensor 'map'; closest: maps"):
        cut_at(model, ["map"], "head.onnx")
    with pytest.raises(ModelError, match=r"--outputs: 'x' is an input of head.onnx"):
        cut_at(model, ["x"], "head.onnx")


@pytest.mark.skipif(shutil.which("gcc") is None or shutil.which("make") is None, reason="gcc/make missing")
def test_hls_builds_the_head_maps_and_debug_replays_them(head: tuple[Path, Path], tmp_path: Path,
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    model, data = head
    args = ["-q", "build", str(model), "--target", "hls", "--calib", str(data), "--no-latency", "-B",
            "tb_vectors=4"]
    assert main([*args, "-o", str(tmp_path / "whole")]) == 2  # the decode has no integer lowering
    assert "node 'scale' (Mul)" in capsys.readouterr().err
    out = tmp_path / "cut"
    assert main([*args, "--outputs", "maps", "-o", str(out)]) == 0
    report = json.loads((out / "report.json").read_text())
    assert report["metrics"]["cut"] == {"outputs": ["maps"]}
    assert list(report["metrics"]["verification"]["outputs"]) == ["maps"]
    assert report["metrics"]["hls"]["csim"]["status"] == "bit-exact"
    capsys.readouterr()
    assert main(["debug", str(model), str(out), "--calib", str(data)]) == 0
    assert "maps" in capsys.readouterr().out


def test_unknown_output_is_one_line_and_writes_nothing(head: tuple[Path, Path], tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    model, data = head
    out = tmp_path / "out"
    code = main(["-q", "build", str(model), "--target", "onnx", "--calib", str(data), "--no-latency",
                 "--outputs", "maps,decode", "-o", str(out)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and not out.exists()
    assert err == [f"dsqc: error: --outputs: {model} has no tensor 'decode'; closest: decoded (tensor "
                   "names, as Netron shows a node's outputs)"], err


def test_several_targets_share_one_cut(head: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = head
    out = tmp_path / "out"
    assert main(["-q", "build", str(model), "--target", "onnx,trt", "--calib", str(data), "--no-latency",
                 "--outputs", "maps", "-o", str(out)]) == 0
    for target in ("onnx", "trt"):
        report = json.loads((out / target / "report.json").read_text())
        assert list(report["metrics"]["verification"]["outputs"]) == ["maps"], target
    assert (out / "agreement.json").is_file()


def test_rebuild_command_carries_the_cut(tmp_path: Path) -> None:
    from dsqc.driver.build_types import BuildRequest, rebuild_command

    request = BuildRequest(model=tmp_path / "m.onnx", target="hls", out_dir=tmp_path / "out", calib="random",
                           outputs=("maps", "boxes"))
    assert "--outputs maps,boxes" in rebuild_command(request, tmp_path / "plan.recipe.toml")
