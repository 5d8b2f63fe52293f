"""Verification leaves padded tokens out: a [batch, seq] output under an ``attention_mask`` input is
measured over the real tokens only, recorded in report.json and said in the summary; the recipe turns
it off; inputs and outputs that only look alike are not masked."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from dsqc.driver.cli import main
from dsqc.verify import masked_metrics, padding_mask

SEQ, DIM = 12, 16


def padded_encoder(mask_name: str = "attention_mask", mask_type: int = TensorProto.INT64,
                   wave: str = "Sin") -> onnx.ModelProto:
    """x[N, S, D] → MatMul (int8 in the build) → y; ``hidden`` = y on real tokens and y + 10·sin(100·y)
    on padded ones, like a real encoder's garbage there: the sine turns y's rounding error (~0.01) into
    noise as large as itself, so padded positions differ wildly between FP32 and int8 while the real
    tokens agree. ``plain`` is a
    second MatMul of x that never reads the mask; ``pooled`` [N, D] reads it but is not [batch, seq]."""
    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.normal(0, 0.25, (DIM, DIM)).astype(np.float32), "w"),
             numpy_helper.from_array(rng.normal(0, 0.25, (DIM, DIM)).astype(np.float32), "w2"),
             numpy_helper.from_array(np.array([1.0], np.float32), "one"),
             numpy_helper.from_array(np.array([100.0], np.float32), "k"),
             numpy_helper.from_array(np.array([10.0], np.float32), "amplitude"),
             numpy_helper.from_array(np.array([-1], np.int64), "last")]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["y"], name="proj"),
        helper.make_node("MatMul", ["x", "w2"], ["plain"], name="proj2"),
        helper.make_node("Cast", [mask_name], ["m"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Sub", ["one", "m"], ["pad2d"], name="pad"),
        helper.make_node("Unsqueeze", ["pad2d", "last"], ["pad3d"], name="unsqueeze"),
        helper.make_node("Mul", ["y", "k"], ["ky"], name="scale"),
        helper.make_node(wave, ["ky"], ["wave"], name=wave.lower()),
        helper.make_node("Mul", ["wave", "amplitude"], ["e"], name="amplify"),
        helper.make_node("Mul", ["e", "pad3d"], ["garbage"], name="garbage"),
        helper.make_node("Add", ["y", "garbage"], ["hidden"], name="add"),
        helper.make_node("ReduceMean", ["hidden"], ["pooled"], name="pool", axes=[1], keepdims=0),
    ]
    graph = helper.make_graph(
        nodes, "padded_encoder",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", SEQ, DIM]),
         helper.make_tensor_value_info(mask_name, mask_type, ["batch", SEQ])],
        [helper.make_tensor_value_info("hidden", TensorProto.FLOAT, ["batch", SEQ, DIM]),
         helper.make_tensor_value_info("plain", TensorProto.FLOAT, ["batch", SEQ, DIM]),
         helper.make_tensor_value_info("pooled", TensorProto.FLOAT, ["batch", DIM])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    return model


def samples(n: int, seed: int, mask_name: str = "attention_mask") -> dict[str, np.ndarray]:
    """Right-padded sentences of 3..SEQ-2 tokens."""
    rng = np.random.default_rng(seed)
    lengths = rng.integers(3, SEQ - 1, n)
    mask = (np.arange(SEQ)[None] < lengths[:, None]).astype(np.int64)
    return {"x": rng.normal(0, 1, (n, SEQ, DIM)).astype(np.float32), mask_name: mask}


@pytest.fixture(scope="module")
def case(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("padding")
    onnx.save(padded_encoder(), root / "enc.onnx")
    np.savez(root / "calib.npz", **samples(64, 1))
    np.savez(root / "eval.npz", **samples(32, 2))
    (root / "off.toml").write_text("[verification]\nmask_padding = false\n")
    return {"root": root, "model": root / "enc.onnx", "calib": root / "calib.npz", "eval": root / "eval.npz"}


def _build(case: dict[str, Path], out: str, *extra: str) -> dict[str, object]:
    folder = case["root"] / out
    assert main(["build", str(case["model"]), "--target", "onnx", "--calib", str(case["calib"]),
                 "--eval-data", str(case["eval"]), "--no-latency", "--no-repair", "-o", str(folder),
                 *extra]) == 0
    report: dict[str, object] = json.loads((folder / "report.json").read_text())["metrics"]["verification"]
    return report


def test_masked_build_measures_real_tokens_and_says_so(case: dict[str, Path],
                                                       capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    ver = _build(case, "masked")
    out = capsys.readouterr().out
    mask = ver["padding_mask"]
    assert isinstance(mask, dict)
    real = int(np.load(case["eval"])["attention_mask"].sum())
    assert mask["input"] == "attention_mask" and mask["outputs"] == ["hidden"]  # not plain, not pooled
    assert mask["positions"] == 32 * SEQ and mask["padding"] == 32 * SEQ - real
    outputs = ver["outputs"]
    assert isinstance(outputs, dict)
    masked, unmasked = outputs["hidden"]["sqnr_db"], mask["unmasked"]["hidden"]["sqnr_db"]
    assert masked > 30 and unmasked < 10, (masked, unmasked)
    assert outputs["hidden"]["cosine"] > 0.999
    # the real tokens of `hidden` are `plain`'s twin (same kind of MatMul): the same error level
    assert abs(masked - outputs["plain"]["sqnr_db"]) < 6
    line = next(t for t in out.splitlines() if "padding left out" in t)
    assert "hidden" in line and "attention_mask = 1" in line and f"{unmasked:.2f} dB" in line
    assert "mask_padding = false" in line


def test_dsqc_verify_measures_the_recorded_vectors_over_real_tokens(
        case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    """``dsqc verify``'s informational SQNR vs FP32 of the bundle's check vectors leaves padding out
    as the build's verification did (``hidden``), and keeps every position of the unmasked ``plain``."""
    ver = _build(case, "verified")
    capsys.readouterr()
    assert main(["verify", str(case["root"] / "verified")]) == 0
    lines = {t.split(":")[0].strip(): t for t in capsys.readouterr().out.splitlines() if "SQNR vs FP32" in t}
    sqnr = {name: float(line.split("SQNR vs FP32 ")[1].split(" dB")[0]) for name, line in lines.items()}
    outputs = ver["outputs"]
    assert isinstance(outputs, dict)
    assert sqnr["hidden"] > 30 and abs(sqnr["hidden"] - sqnr["plain"]) < 6, sqnr


def test_recipe_turns_masking_off(case: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    on = _build(case, "on")
    capsys.readouterr()
    off = _build(case, "off", "--recipe", str(case["root"] / "off.toml"))
    assert "padding left out" not in capsys.readouterr().out
    assert off["padding_mask"] is None
    outputs_off, mask_on = off["outputs"], on["padding_mask"]
    assert isinstance(outputs_off, dict) and isinstance(mask_on, dict)
    assert outputs_off["hidden"]["sqnr_db"] == pytest.approx(mask_on["unmasked"]["hidden"]["sqnr_db"])


@pytest.mark.parametrize("text, needle", [
    ("[verification]\nmask_padding = \"no\"\n", "verification.mask_padding must be true or false"),
    ("[verification]\nmask_pading = false\n", "did you mean 'verification.mask_padding'"),
])
def test_bad_verification_table_is_one_line(case: dict[str, Path], tmp_path: Path, text: str, needle: str,
                                            capsys: pytest.CaptureFixture[str]) -> None:
    recipe = tmp_path / "bad.toml"
    recipe.write_text(text)
    capsys.readouterr()
    code = main(["build", str(case["model"]), "--target", "onnx", "--calib", str(case["calib"]),
                 "--no-latency", "--recipe", str(recipe), "-o", str(tmp_path / "out")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("dsqc: error: ") and err.count("\n") == 1 and needle in err, err
    assert not (tmp_path / "out").exists()


def _fp32_outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    from dsqc.verify import run_batches, session
    return run_batches(session(model), [feeds])


@pytest.mark.parametrize("name, dtype", [("attention_mask", TensorProto.FLOAT),  # not an integer input
                                         ("key_padding_mask", TensorProto.INT64),  # 1 = padding there
                                         ("token_type_ids", TensorProto.INT64)])  # not a mask
def test_inputs_that_only_look_like_a_mask_mask_nothing(name: str, dtype: int) -> None:
    model = padded_encoder(name, dtype)
    feeds = samples(4, 3, name)
    if dtype == TensorProto.FLOAT:
        feeds[name] = feeds[name].astype(np.float32)
    assert padding_mask(model, [feeds], _fp32_outputs(model, feeds)) is None


def test_other_mask_names_values_and_shapes() -> None:
    model = padded_encoder("input_mask")
    feeds = samples(4, 3, "input_mask")
    outputs = _fp32_outputs(model, feeds)
    found = padding_mask(model, [feeds], outputs)
    assert found is not None and found.input == "input_mask" and found.outputs == ("hidden",)
    assert padding_mask(model, [{**feeds, "input_mask": feeds["input_mask"] * 2}], outputs) is None  # not 0/1
    # a static declared dim that differs from the mask's excludes an output whatever its runtime shape
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = SEQ + 1
    assert padding_mask(model, [feeds], outputs) is None


def test_masked_metrics_count_only_real_tokens() -> None:
    rng = np.random.default_rng(0)
    ref = rng.normal(0, 1, (3, 5, 4))
    keep = np.array([[1, 1, 0, 0, 0], [1, 1, 1, 1, 0], [1, 0, 0, 0, 0]], bool)
    got = ref + 0.01 * rng.normal(0, 1, ref.shape)
    got[~keep] = 1e3  # garbage where the mask is 0
    m = masked_metrics(ref, got, keep)
    assert m["sqnr_db"] > 35 and m["cosine"] > 0.999 and m["max_abs_diff"] < 0.1


def test_debug_measures_masked_outputs_as_the_build_verified(case: dict[str, Path],
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    ver = _build(case, "debugged")
    outputs = ver["outputs"]
    assert isinstance(outputs, dict)
    folder = case["root"] / "debugged"
    capsys.readouterr()
    assert main(["debug", str(case["model"]), str(folder), "--eval-data", str(case["eval"])]) == 0
    out = capsys.readouterr().out
    body = json.loads((folder / "debug.json").read_text())
    assert body["data"]["padding_mask"] == {"input": "attention_mask", "outputs": ["hidden"]}
    assert abs(body["outputs"]["hidden"]["accumulated_sqnr_db"] - outputs["hidden"]["sqnr_db"]) < 0.1
    assert "hidden: over real tokens only (attention_mask = 1)" in out
    proj = next(p for p in body["points"] if p["tensor"] == "w")  # the MatMul's weight alone
    assert proj["local_output_sqnr_db_by_output"]["hidden"] > 30  # real tokens: no sine garbage


def test_tflite_runtime_numbers_leave_padding_out_too(case: dict[str, Path]) -> None:
    """LiteRT's own run of the .tflite (which also feeds the verdict) masks as ORT's verification does."""
    folder, model = case["root"] / "tfl", case["root"] / "enc_tanh.onnx"
    onnx.save(padded_encoder(wave="Tanh"), model)  # LiteRT has no SIN kernel
    assert main(["build", str(model), "--target", "tflite", "--calib", str(case["calib"]),
                 "--eval-data", str(case["eval"]), "--no-latency", "-o", str(folder)]) == 0
    metrics = json.loads((folder / "report.json").read_text())["metrics"]
    litert = metrics["tflite"]["verification"]
    assert litert["padding_mask"]["outputs"] == ["hidden"]
    assert json.loads((folder / "report.json").read_text())["verdict"]["level"] == "ok"
    off = case["root"] / "tfl_off"
    assert main(["build", str(model), "--target", "tflite", "--calib", str(case["calib"]), "--eval-data",
                 str(case["eval"]), "--no-latency", "--recipe", str(case["root"] / "off.toml"),
                 "-o", str(off)]) == 0
    unmasked = json.loads((off / "report.json").read_text())["metrics"]["tflite"]["verification"]
    assert "padding_mask" not in unmasked
    real, every = litert["outputs"]["hidden"]["sqnr_db"], unmasked["outputs"]["hidden"]["sqnr_db"]
    assert real > 25 and real > every + 6, (real, every)
