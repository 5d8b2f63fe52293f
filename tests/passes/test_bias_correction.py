"""BiasCorrection on QDQ models: the mean output error of coarse int weights shrinks, in ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _graphs import apply, init, make_model, randn, run, value
from onnx import helper

from dsqc.backends.onnx.profile import ONNX_PROFILE
from dsqc.calibration.data import SampleSet
from dsqc.passes import BiasCorrection
from dsqc.passes.bias_correction import MARK
from dsqc.quant.boosters import correct_biases
from dsqc.quant.quantize import quantize_model
from dsqc.quant.recipe import Recipe

CONV_W = randn((8, 1, 3, 3), seed=1)
MM_W = randn((16, 6), seed=2)
GEMM_W = randn((6, 16), seed=3)


def positive(seed: int, shape: tuple[int, ...]) -> np.ndarray:
    """Post-ReLU-like inputs: a non-zero mean per channel is what makes ΔW · E[x] matter."""
    return (np.abs(randn(shape, seed=seed)) + 0.5).astype(np.float32)


def feeds(seed: int, n: int = 16) -> dict[str, np.ndarray]:
    return {"x": positive(seed, (n, 8, 10, 10)), "t": positive(seed + 50, (n, 5, 16)),
            "g": positive(seed + 90, (n, 16))}


def fp32_nodes(weights: dict[str, str]) -> list[onnx.NodeProto]:
    return [helper.make_node("Conv", ["x", weights["conv"], "conv_b"], ["y1"], name="conv", group=8,
                             pads=[1] * 4),
            helper.make_node("MatMul", ["t", weights["mm"]], ["m"], name="mm"),
            helper.make_node("Add", ["m", "mm_b"], ["y2"], name="mm_bias"),
            helper.make_node("Gemm", ["g", weights["gemm"], "gemm_c"], ["y3"], name="gemm", transB=1,
                             alpha=0.5)]


def biases() -> list[onnx.TensorProto]:
    return [init("conv_b", randn((8,), seed=4)), init("mm_b", randn((6,), seed=5)),
            init("gemm_c", randn((6,), seed=6))]


IO = ([value("x", (None, 8, 10, 10)), value("t", (None, 5, 16)), value("g", (None, 16))],
      [value("y1", None), value("y2", None), value("y3", None)])


def fp32_model() -> onnx.ModelProto:
    inits = [init("conv_w", CONV_W), init("mm_w", MM_W), init("gemm_w", GEMM_W), *biases()]
    return make_model(fp32_nodes({"conv": "conv_w", "mm": "mm_w", "gemm": "gemm_w"}), *IO, inits)


def weight_only_model(levels: int = 7) -> onnx.ModelProto:
    """The same layers with weights as DequantizeLinear(int8 per channel, ±levels), activations float."""
    nodes, inits = [], [*biases()]
    for name, w, axis in (("conv", CONV_W, 0), ("mm", MM_W, 1), ("gemm", GEMM_W, 0)):
        scale = np.abs(w).max(axis=tuple(i for i in range(w.ndim) if i != axis)) / levels
        shape = [1] * w.ndim
        shape[axis] = -1
        inits += [init(f"{name}_q", np.round(w / scale.reshape(shape)).astype(np.int8)),
                  init(f"{name}_s", scale.astype(np.float32)),
                  init(f"{name}_z", np.zeros(scale.size, np.int8))]
        nodes.append(helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_z"],
                                      [f"{name}_w"], axis=axis))
    return make_model([*nodes, *fp32_nodes({"conv": "conv_w", "mm": "mm_w", "gemm": "gemm_w"})], *IO, inits)


def mean_errors(reference: onnx.ModelProto, quantized: onnx.ModelProto) -> list[float]:
    """Per output: norm over channels of the mean error (over samples and positions)."""
    data = feeds(seed=100, n=32)
    out = []
    for ref, got, axis in zip(run(reference, data), run(quantized, data), (1, -1, -1), strict=True):
        err = np.moveaxis(got.astype(np.float64) - ref, axis, 0).reshape(ref.shape[axis], -1).mean(axis=1)
        out.append(float(np.linalg.norm(err)))
    return out


def layer_means(data: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {"conv": data["x"].mean(axis=(0, 2, 3)), "mm": data["t"].mean(axis=(0, 1)),
            "gemm": data["g"].mean(axis=0)}


def test_weight_only_mean_error_cancels() -> None:
    fp32, quant = fp32_model(), weight_only_model()
    weights = {"conv": CONV_W, "mm": MM_W, "gemm": GEMM_W}
    result, corrected = apply(BiasCorrection(weights, layer_means(feeds(seed=7, n=64))), quant)
    assert result.modified
    before, after = mean_errors(fp32, quant), mean_errors(fp32, corrected)
    for b, a in zip(before, after, strict=True):
        assert a < 0.25 * b, (before, after)
    again, _ = apply(BiasCorrection(weights, layer_means(feeds(seed=7))), corrected)
    assert not again.modified and any(p.key == MARK for p in corrected.metadata_props)


def test_int32_bias_of_a_quantized_build() -> None:
    """Through the quantizer: Conv keeps an int32 bias behind a DequantizeLinear, requantized in place."""
    fp32 = fp32_model()
    samples = SampleSet(feeds(seed=8, n=64), "test")
    recipe = Recipe(method="minmax", weight_limit=15)  # coarse weights: a visible mean shift
    qdq = quantize_model(fp32, ONNX_PROFILE, recipe, samples).model
    fixed = correct_biases(fp32, qdq, samples)
    before, after = mean_errors(fp32, qdq), mean_errors(fp32, fixed)
    assert after[0] < 0.5 * before[0], (before, after)
    assert sum(after) < sum(before)
    int32 = [t for t in fixed.graph.initializer if t.data_type == onnx.TensorProto.INT32]
    assert int32, "the Conv bias stays int32"


def test_no_bias_no_change() -> None:
    model = make_model(
        [helper.make_node("DequantizeLinear", ["q", "s"], ["w"], axis=1),
         helper.make_node("MatMul", ["t", "w"], ["y"], name="mm")],
        [value("t", (None, 5, 16))], [value("y", None)],
        [init("q", np.ones((16, 6), np.int8)), init("s", np.full(6, 0.1, np.float32))])
    result, _ = apply(BiasCorrection({"mm": MM_W}, {"mm": np.ones(16)}), model)
    assert not result.modified


@pytest.mark.parametrize("block", [0, 4])
def test_dequantize_constant_matches_ort(block: int) -> None:
    from dsqc.ir import Model
    from dsqc.passes.bias_correction import dequantize_constant

    q = np.random.default_rng(0).integers(-8, 8, (16, 6)).astype(np.int8)
    scale = np.random.default_rng(1).uniform(0.1, 1, (4, 6) if block else (6,)).astype(np.float32)
    attrs = {"axis": 0, "block_size": block} if block else {"axis": 1}
    model = make_model([helper.make_node("DequantizeLinear", ["q", "s"], ["w"], **attrs),
                        helper.make_node("Identity", ["w"], ["y"])], [], [value("y", None)],
                       [init("q", q), init("s", scale)], opset=21 if block else 17)
    graph = Model.from_proto(model).graph
    dq = next(n for n in graph.nodes if n.op == "DequantizeLinear")
    np.testing.assert_allclose(dequantize_constant(dq), run(model, {})[0], rtol=1e-6)
