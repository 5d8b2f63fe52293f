"""``dsqc build --target hls`` end to end: calibrate, plan with the hls profile, lower, write, csim."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.models.mnist import DEMO_MODEL_PATH


@pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")), reason="gcc/make/nm missing")
def test_build_mnist_for_hls(tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(BuildRequest(model=DEMO_MODEL_PATH, target="hls", out_dir=out, calib="mnist",
                                calib_samples=128, measure_latency=False,
                                backend_options={"parallelism": 4, "tb_vectors": 8}))
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["vectors"] == 8
    assert hls["lsb_vs_ort"]["float_requant"]["max_lsb"] <= 1
    assert (out / "hls" / "firmware" / "mnist_cnn.c").is_file()
    assert (out / "hls" / "README.md").read_text().count("parallelism 4") == 1
    assert result.plan is not None and all(
        spec.dtype in ("int8", "int32") for spec in result.plan.tensors.values())


def squeeze_excitation_model(path: Path) -> Path:
    """x[N,4,8,8] → Conv → SiLU (x·Sigmoid(x)) → squeeze-excitation (GlobalAveragePool → Conv 1x1 →
    Relu → Conv 1x1 → Sigmoid gate [N, 8, 1, 1] × the map) → Tanh → Conv 1x1 → y: EfficientNet's,
    MobileNetV3's and RegNetY's block in small."""
    rng = np.random.default_rng(0)

    def w(name: str, shape: tuple[int, ...], scale: float = 0.4) -> onnx.TensorProto:
        return numpy_helper.from_array(rng.normal(0, scale, shape).astype(np.float32), name)

    inits = [w("w1", (8, 4, 3, 3)), w("b1", (8,), 0.1), w("ws", (2, 8, 1, 1)), w("bs", (2,), 0.1),
             w("we", (8, 2, 1, 1)), w("be", (8,), 0.1), w("w2", (3, 8, 1, 1)), w("b2", (3,), 0.1)]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["c1"], ["s1"], name="silu_sigmoid"),
        helper.make_node("Mul", ["c1", "s1"], ["a1"], name="silu_mul"),
        helper.make_node("GlobalAveragePool", ["a1"], ["g"], name="squeeze"),
        helper.make_node("Conv", ["g", "ws", "bs"], ["r"], name="reduce"),
        helper.make_node("Relu", ["r"], ["rr"], name="reduce_relu"),
        helper.make_node("Conv", ["rr", "we", "be"], ["e"], name="expand"),
        helper.make_node("Sigmoid", ["e"], ["gate"], name="gate"),
        helper.make_node("Mul", ["gate", "a1"], ["scaled"], name="excite"),
        helper.make_node("Tanh", ["scaled"], ["t"], name="tanh"),
        helper.make_node("Conv", ["t", "w2", "b2"], ["y"], name="conv2"),
    ]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 3, 8, 8])
    graph = helper.make_graph(nodes, "se", [x], [y], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


@pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")), reason="gcc/make/nm missing")
def test_squeeze_excitation_and_silu_are_bit_exact(tmp_path: Path) -> None:
    """Sigmoid and Tanh become 256-entry tables (each code as ORT's DQ → op → Q computes it), Mul an int8
    product requantized once, the gate broadcast per channel: gcc's csim is bit-exact with the integer
    reference, and each op alone is within 1 LSB of ORT."""
    model = squeeze_excitation_model(tmp_path / "se.onnx")
    np.savez(tmp_path / "calib.npz", x=np.random.default_rng(1).normal(size=(48, 4, 8, 8)).astype(np.float32))
    result = build(BuildRequest(model=model, target="hls", out_dir=tmp_path / "out",
                                calib=str(tmp_path / "calib.npz"), measure_latency=False,
                                backend_options={"tb_vectors": 8}))
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["vectors"] == 8
    assert hls["lsb_vs_ort"]["per_op_float_requant"]["max_lsb"] <= 1
    source = (tmp_path / "out" / "hls" / "firmware" / "se.c").read_text()
    assert source.count("_table[x[i] + 128]") == 3  # two sigmoids and the tanh
    assert "const int8_t b[8]" in source  # the gate: one value per channel
    assert result.verdict is not None and result.verdict.level == "ok"


def shuffle_unit_model(path: Path) -> Path:
    """ShuffleNetV2's unit exported from torch with a dynamic batch: ``x.chunk(2, dim=1)`` and the
    channel shuffle (view → transpose → view) compute their Slice bounds and Reshape shapes from
    ``Shape`` at run time."""
    torch = pytest.importorskip("torch")
    from dsqc.torch_export import from_torch

    class ShuffleUnit(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            torch.manual_seed(0)
            self.stem = torch.nn.Conv2d(3, 8, 3, padding=1)
            self.branch = torch.nn.Sequential(torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU(),
                                              torch.nn.Conv2d(4, 4, 3, padding=1, groups=4),
                                              torch.nn.Conv2d(4, 4, 1), torch.nn.ReLU())
            self.head = torch.nn.Conv2d(8, 5, 1)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            y = torch.relu(self.stem(x))
            keep, work = y.chunk(2, dim=1)
            y = torch.cat((keep, self.branch(work)), dim=1)
            n, c, h, w = y.shape
            y = y.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, c, h, w)
            return self.head(y)

    onnx.save(from_torch(ShuffleUnit(), torch.zeros(1, 3, 8, 8)), path)
    return path


@pytest.mark.skipif(not all(shutil.which(t) for t in ("gcc", "make", "nm")), reason="gcc/make/nm missing")
def test_channel_split_and_shuffle_are_bit_exact(tmp_path: Path) -> None:
    """The Shape arithmetic folds for batch 1; the split becomes two channel slices and the shuffle a
    5-D transpose between reshapes, all copies at the shared scale: gcc's csim is bit-exact and the
    program is bit-exact with ORT end to end."""
    model = shuffle_unit_model(tmp_path / "shuffle.onnx")
    ops = {n.op_type for n in onnx.load(model).graph.node}
    assert {"Shape", "Slice", "Transpose", "Reshape"} <= ops
    calib = np.random.default_rng(1).normal(size=(48, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", input=calib)
    result = build(BuildRequest(model=model, target="hls", out_dir=tmp_path / "out",
                                calib=str(tmp_path / "calib.npz"), measure_latency=False,
                                backend_options={"tb_vectors": 8}))
    hls = result.metrics["hls"]
    assert hls["csim"]["status"] == "bit-exact" and hls["csim"]["vectors"] == 8
    source = (tmp_path / "out" / "hls" / "firmware" / "shuffle.c").read_text()
    assert source.count("/* Slice node") == 2 and source.count("/* Transpose node") == 1
    assert hls["lsb_vs_ort"]["float_requant"]["max_lsb"] == 0  # ORT runs the QDQ model: same integers
