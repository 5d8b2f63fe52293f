"""SmoothQuant: exact in ORT (1e-5); folds into LayerNorm / RMSNorm weights or inserts a Mul; outliers
move from the activation into the weights; statistics come from ``channel_stats`` through ORT."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from _graphs import apply, check_pass, check_refused, init, make_model, ops, randn, run, value
from onnx import helper, numpy_helper

from dsqc.calibration.channel_stats import channel_stats
from dsqc.calibration.data import SampleSet
from dsqc.passes import SmoothQuant

K, N = 16, 12
OUTLIERS = np.ones(K, np.float32)
OUTLIERS[[3, 11]] = 40.0  # two outlier channels, as real transformers have


def feeds(seed: int = 1) -> dict[str, np.ndarray]:
    return {"x": randn((4, 5, K), seed=seed)}


def ln_model(extra_reader: bool = False) -> onnx.ModelProto:
    """x → LayerNorm(gamma with outlier channels) → three MatMuls (q, k, v) [+ a residual Add]."""
    nodes = [helper.make_node("LayerNormalization", ["x", "gamma", "beta"], ["h"], name="ln", axis=-1)]
    inits = [init("gamma", OUTLIERS * randn((K,), seed=2, scale=0.1) + OUTLIERS),
             init("beta", randn((K,), seed=3))]
    outputs = []
    for i, proj in enumerate(("q", "k", "v")):
        nodes.append(helper.make_node("MatMul", ["h", f"w_{proj}"], [proj], name=f"{proj}_proj"))
        inits.append(init(f"w_{proj}", randn((K, N), seed=4 + i, scale=0.2)))
        outputs.append(value(proj, None))
    if extra_reader:
        nodes.append(helper.make_node("Add", ["h", "x"], ["res"], name="residual"))
        outputs.append(value("res", None))
    return make_model(nodes, [value("x", (4, 5, K))], outputs, inits)


def absmax(model: onnx.ModelProto, name: str) -> dict[str, np.ndarray]:
    stats = channel_stats(model, {name: -1}, SampleSet(feeds(), "test"), batch_size=3)
    return {name: stats[name].absmax}


def test_folds_into_layernorm_when_projections_are_the_only_readers() -> None:
    model = ln_model()
    after = check_pass(SmoothQuant(0.5, absmax(model, "h")), model, feeds())
    assert ops(after) == ["LayerNormalization", "MatMul", "MatMul", "MatMul"]
    def log_spread(proto: onnx.ModelProto) -> float:
        gamma = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}["gamma"]
        return float(np.ptp(np.log(np.abs(gamma))))

    assert log_spread(after) < log_spread(model)


def test_inserts_mul_when_another_reader_needs_the_original() -> None:
    model = ln_model(extra_reader=True)
    after = check_pass(SmoothQuant(0.5, absmax(model, "h")), model, feeds())
    assert ops(after).count("Mul") == 1
    add = next(n for n in after.graph.node if n.op_type == "Add")
    assert "h" in add.input  # the residual still reads the unsmoothed tensor


def test_rmsnorm_weight_absorbs_the_scale() -> None:
    """Llama's RMSNorm ends in Mul(weight, normalized): the weight takes 1/s."""
    nodes = [helper.make_node("Mul", ["g", "x"], ["h"], name="rms_weight"),
             helper.make_node("MatMul", ["h", "w"], ["y"], name="proj")]
    model = make_model(nodes, [value("x", (4, 5, K))], [value("y", None)],
                       [init("g", OUTLIERS), init("w", randn((K, N), seed=4))])
    after = check_pass(SmoothQuant(0.5, absmax(model, "h")), model, feeds())
    assert ops(after) == ["Mul", "MatMul"]


@pytest.mark.parametrize("trans_b", [0, 1])
def test_gemm_on_graph_input(trans_b: int) -> None:
    w = randn((N, K) if trans_b else (K, N), seed=5)
    model = make_model([helper.make_node("Gemm", ["x", "w", "c"], ["y"], transB=trans_b, alpha=0.5)],
                       [value("x", (6, K))], [value("y", None)],
                       [init("w", w), init("c", randn((N,), seed=6))])
    x = (randn((6, K), seed=7) * OUTLIERS).astype(np.float32)
    stats = channel_stats(model, {"x": -1}, SampleSet({"x": x}, "test"))
    after = check_pass(SmoothQuant(0.8, {"x": stats["x"].absmax}), model, {"x": x})
    assert ops(after) == ["Mul", "Gemm"]


def test_outliers_move_into_the_weights() -> None:
    model = ln_model()
    stats = absmax(model, "h")
    _, after = apply(SmoothQuant(0.5, stats), model)
    smoothed = channel_stats(after, {"h_smoothed": -1}, SampleSet(feeds(), "test"))["h_smoothed"].absmax
    ratio = lambda a: float(np.max(a) / np.median(a))  # noqa: E731
    assert ratio(smoothed) < 0.3 * ratio(stats["h"])


def test_quantization_error_drops_on_outlier_activations() -> None:
    """Per-tensor int8 activation × per-channel int8 weight, emulated in numpy: SmoothQuant helps."""
    model = ln_model()
    stats = absmax(model, "h")

    def int8_error(proto: onnx.ModelProto, act: str) -> float:
        sess_out = run(_with_output(proto, act), feeds(5))
        h, q = sess_out[-1], sess_out[0]
        w = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}["w_q"]
        hs = np.abs(h).max() / 127
        ws = np.abs(w).max(axis=0) / 127
        approx = (np.round(h / hs) * hs) @ (np.round(w / ws) * ws)
        return float(np.linalg.norm(approx - q) / np.linalg.norm(q))

    _, after = apply(SmoothQuant(0.5, stats), model)
    assert int8_error(after, "h_smoothed") < 0.5 * int8_error(model, "h")


def _with_output(proto: onnx.ModelProto, name: str) -> onnx.ModelProto:
    out = onnx.ModelProto()
    out.CopyFrom(proto)
    out.graph.output.append(value(name, None))
    return out


def test_without_statistics_nothing_changes() -> None:
    check_refused(SmoothQuant(0.5, {}), ln_model())


def test_activation_matmul_is_not_a_target() -> None:
    model = make_model([helper.make_node("MatMul", ["a", "b"], ["y"])],
                       [value("a", (2, 3, K)), value("b", (2, K, N))], [value("y", None)])
    check_refused(SmoothQuant(0.5, {"a": np.ones(K)}), model)


def test_bad_alpha() -> None:
    with pytest.raises(ValueError, match="alpha"):
        SmoothQuant(1.5)
