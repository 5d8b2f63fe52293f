"""Sample loading: every ``--calib`` form, ``SampleSet`` slicing, and each validation error."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
from calib_models import conv_model, two_input_model
from onnx import helper, numpy_helper

from dsqc.calibration import ImagePreprocess, InputSpec, SampleSet, load_samples, model_inputs
from dsqc.errors import CalibrationError, RecipeError

HERE = Path(__file__).parent
X = [InputSpec("x", np.dtype(np.float32), ("N", 2, 3))]
MNIST_IN = [InputSpec("input", np.dtype(np.float32), ("N", 1, 28, 28))]


@pytest.fixture(autouse=True)
def _fixture_module_importable(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(HERE))


def rand(*shape: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


# -- model inputs ---------------------------------------------------------------------------------
def test_model_inputs_skips_initializers_and_reads_dims() -> None:
    proto = conv_model()
    proto.graph.input.append(helper.make_tensor_value_info("w1", 1, [4, 3, 3, 3]))  # also an initializer
    assert model_inputs(proto) == [InputSpec("x", np.dtype(np.float32), ("N", 3, 8, 8))]
    specs = model_inputs(two_input_model())
    assert [s.name for s in specs] == ["a", "b", "ids"]
    assert specs[2].dtype == np.int64


# -- each source form -----------------------------------------------------------------------------
def test_npz_with_labels_and_limit(tmp_path: Path) -> None:
    path = tmp_path / "calib.npz"
    np.savez(path, x=rand(10, 2, 3), labels=np.arange(10))
    s = load_samples(str(path), X)
    assert len(s) == 10 and s.labels is not None and s.labels.tolist() == list(range(10))
    assert s.source == "calib.npz (10 samples)" and not s.synthetic
    s4 = load_samples(str(path), X, limit=4)
    assert len(s4) == 4 and s4.labels is not None and s4.labels.tolist() == [0, 1, 2, 3]
    np.testing.assert_array_equal(s4.feeds["x"], rand(10, 2, 3)[:4])


def test_npy_file_and_float64_is_cast(tmp_path: Path) -> None:
    path = tmp_path / "x.npy"
    np.save(path, rand(3, 2, 3).astype(np.float64))
    s = load_samples(str(path), X)
    assert s.feeds["x"].dtype == np.float32 and len(s) == 3 and s.labels is None


def test_folder_of_npy_sorted_single_and_batch(tmp_path: Path) -> None:
    np.save(tmp_path / "b.npy", rand(2, 3, seed=2))  # one sample
    np.save(tmp_path / "a.npy", rand(3, 2, 3, seed=1))  # a batch of 3
    np.save(tmp_path / "c.npy", rand(2, 2, 3, seed=3))
    (tmp_path / "README.txt").write_text("ignored")
    s = load_samples(str(tmp_path), X)
    want = np.concatenate([rand(3, 2, 3, seed=1), rand(2, 3, seed=2)[None], rand(2, 2, 3, seed=3)])
    np.testing.assert_array_equal(s.feeds["x"], want)
    assert len(load_samples(str(tmp_path), X, limit=4)) == 4


def test_folder_of_npz_two_inputs(tmp_path: Path) -> None:
    specs = model_inputs(two_input_model())
    for i in range(3):
        np.savez(tmp_path / f"{i}.npz", a=rand(2, seed=i), b=rand(2, seed=9), ids=np.int64(i), labels=i)
    s = load_samples(str(tmp_path), specs)
    assert len(s) == 3 and s.feeds["ids"].tolist() == [0, 1, 2]
    assert s.labels is not None and s.labels.tolist() == [0, 1, 2]


def _write_images(folder: Path, n: int, size: tuple[int, int] = (10, 8)) -> list[np.ndarray]:
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    pixels = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
        Image.fromarray(arr).save(folder / f"img{i}.png")
        pixels.append(arr)
    return pixels


def test_image_folder_preprocessing(tmp_path: Path) -> None:
    pixels = _write_images(tmp_path, 3, size=(8, 8))
    spec = [InputSpec("img", np.dtype(np.float32), ("N", 3, 8, 8))]
    pre = ImagePreprocess(size=8, crop=8, mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25))
    s = load_samples(str(tmp_path), spec, preprocess=pre)
    want = (pixels[1].astype(np.float32) / 255 - 0.5) / 0.25
    np.testing.assert_allclose(s.feeds["img"][1], want.transpose(2, 0, 1), atol=1e-5)
    nhwc = load_samples(str(tmp_path), [InputSpec("img", np.dtype(np.float32), ("N", 8, 8, 3))])
    assert nhwc.feeds["img"].shape == (3, 8, 8, 3)  # defaults adapted to the model's size and layout


def test_image_class_subfolders_give_labels(tmp_path: Path) -> None:
    _write_images(tmp_path / "cat", 2)
    _write_images(tmp_path / "dog", 1)
    spec = [InputSpec("img", np.dtype(np.float32), ("N", 3, 6, 6))]
    s = load_samples(str(tmp_path), spec, preprocess=ImagePreprocess(size=6, crop=6))
    assert s.feeds["img"].shape == (3, 3, 6, 6)
    assert s.labels is not None and s.labels.tolist() == [0, 0, 1]


def test_image_folder_without_pillow(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    _write_images(tmp_path, 1)
    monkeypatch.setitem(sys.modules, "PIL", None)
    spec = [InputSpec("img", np.dtype(np.float32), ("N", 3, 8, 8))]
    with pytest.raises(CalibrationError, match="image folders need Pillow: pip install pillow"):
        load_samples(str(tmp_path), spec)


def test_callable_samples_and_batches() -> None:
    s = load_samples("feeds_fixture:samples", X)
    assert len(s) == 4 and s.labels is None  # not every item has labels
    assert len(load_samples("feeds_fixture:one_batch", X)) == 5
    s = load_samples("feeds_fixture:endless", X, limit=6)
    assert s.feeds["x"][:, 0, 0].tolist() == [0, 1, 2, 3, 4, 5]
    assert len(load_samples(f"{HERE / 'feeds_fixture.py'}:one_batch", X)) == 5


@pytest.mark.parametrize(("spec", "message"), [
    ("feeds_fixture:bad_item", "item 0 is a list"),
    ("feeds_fixture:broken", "raised RuntimeError: dataset server down"),
    ("feeds_fixture:missing", "has no callable 'missing'"),
    ("feeds_fixture:NOT_CALLABLE", "has no callable 'NOT_CALLABLE'"),
    ("no_such_module_xyz:f", "cannot import no_such_module_xyz"),
])
def test_callable_errors(spec: str, message: str) -> None:
    with pytest.raises(CalibrationError, match=message):
        load_samples(spec, X)


def test_mnist_train_and_test_splits() -> None:
    cal = load_samples("mnist", MNIST_IN, limit=8)
    ev = load_samples("mnist", MNIST_IN, limit=8, purpose="eval")
    assert cal.feeds["input"].shape == (8, 1, 28, 28) and cal.labels is not None and ev.labels is not None
    assert not np.array_equal(cal.feeds["input"], ev.feeds["input"])


def test_random_is_seeded_and_synthetic() -> None:
    specs = [InputSpec("x", np.dtype(np.float32), ("N", "seq", 4)),
             InputSpec("m", np.dtype(np.int64), (1, 5))]
    a = load_samples("random", specs, limit=3)
    b = load_samples("random", specs, limit=3)
    assert a.synthetic and a.feeds["x"].shape == (3, 1, 4) and a.feeds["m"].shape == (3, 5)
    np.testing.assert_array_equal(a.feeds["x"], b.feeds["x"])
    assert len(load_samples("random", specs)) == 32


# -- SampleSet ------------------------------------------------------------------------------------
def test_sampleset_batches_take_split() -> None:
    s = SampleSet({"x": np.arange(10.0)[:, None]}, "t", labels=np.arange(10))
    assert [len(b["x"]) for b in s.batches(4)] == [4, 4, 2]
    assert len(s.take(3)) == 3 and s.take(99) is s
    cal, ev = s.split(3)
    assert cal.feeds["x"][:, 0].tolist() == list(range(7))
    assert ev.labels is not None and ev.labels.tolist() == [7, 8, 9]
    for bad in (0, 10):
        with pytest.raises(CalibrationError, match="hold out"):
            s.split(bad)


# -- validation errors ----------------------------------------------------------------------------
def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "d.npz"
    np.savez(path, **arrays)  # type: ignore[arg-type]
    return str(path)


def test_unknown_input_lists_expected(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"unknown input 'y'; the model's inputs are 'x'"):
        load_samples(_npz(tmp_path, y=rand(2, 2, 3)), X)


def test_missing_input(tmp_path: Path) -> None:
    specs = model_inputs(two_input_model())
    with pytest.raises(CalibrationError, match=r"no data for input 'b'"):
        load_samples(_npz(tmp_path, a=rand(2, 2), ids=np.zeros(2, np.int64)), specs)


def test_shape_mismatch_message(tmp_path: Path) -> None:
    spec = [InputSpec("x", np.dtype(np.float32), ("N", 1, 28, 28))]
    with pytest.raises(CalibrationError, match=r"input 'x' expects \[N,1,28,28\], got \[N,3,28,28\]"):
        load_samples(_npz(tmp_path, x=rand(2, 3, 28, 28)), spec)
    with pytest.raises(CalibrationError, match=r"input 'x' expects .* got an array of shape \[28,28\]"):
        load_samples(_npz(tmp_path, x=rand(28, 28)), spec)


def test_dtype_mismatch(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match=r"input 'x' expects float32, got int64"):
        load_samples(_npz(tmp_path, x=np.ones((2, 2, 3), np.int64)), X)
    ints = [InputSpec("ids", np.dtype(np.int32), ("N", 4))]
    with pytest.raises(CalibrationError, match=r"input 'ids' expects int32, got float32"):
        load_samples(_npz(tmp_path, ids=rand(2, 4)), ints)
    assert load_samples(_npz(tmp_path, ids=np.ones((2, 4), np.int64)), ints).feeds["ids"].dtype == np.int32


def test_nan_names_input_and_sample(tmp_path: Path) -> None:
    x = rand(5, 2, 3)
    x[3, 1, 2] = np.inf
    with pytest.raises(CalibrationError, match=r"input 'x' has Inf in sample 3"):
        load_samples(_npz(tmp_path, x=x), X)


def test_empty_and_unequal_counts(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="no samples"):
        load_samples(_npz(tmp_path, x=np.zeros((0, 2, 3), np.float32)), X)
    specs = model_inputs(two_input_model())[:2]
    with pytest.raises(CalibrationError, match="different"):
        load_samples(_npz(tmp_path, a=rand(3, 2), b=rand(2, 2)), specs)


def test_bad_specs(tmp_path: Path) -> None:
    with pytest.raises(CalibrationError, match="no such file or folder"):
        load_samples(str(tmp_path / "nope.npz"), X)
    (tmp_path / "d.csv").write_text("1,2")
    with pytest.raises(CalibrationError, match=r"unsupported file type '\.csv'"):
        load_samples(str(tmp_path / "d.csv"), X)
    with pytest.raises(CalibrationError, match=r"no \.npy, \.npz or image files"):
        load_samples(str(tmp_path), X)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(CalibrationError, match=r"cannot read bad\.npz"):
        load_samples(str(tmp_path / "bad.npz"), X)


def test_npy_for_multi_input_model(tmp_path: Path) -> None:
    np.save(tmp_path / "a.npy", rand(2, 2))
    with pytest.raises(CalibrationError, match=r"a \.npy file holds one array"):
        load_samples(str(tmp_path), model_inputs(two_input_model()))


def test_mixed_folder(tmp_path: Path) -> None:
    _write_images(tmp_path, 1)
    np.save(tmp_path / "a.npy", rand(2, 3))
    with pytest.raises(CalibrationError, match="mixes array files and images"):
        load_samples(str(tmp_path), X)


# -- ImagePreprocess ------------------------------------------------------------------------------
def test_image_preprocess_from_dict() -> None:
    pre = ImagePreprocess.from_dict({"size": 256, "crop": 224, "mean": [0.5], "std": [0.5], "color": "BGR"})
    assert pre.mean == (0.5,) and pre.size == 256 and pre.color == "BGR"
    with pytest.raises(RecipeError, match="unknown key 'resize'"):
        ImagePreprocess.from_dict({"resize": 256})
    with pytest.raises(RecipeError, match="layout"):
        ImagePreprocess.from_dict({"layout": "CHW"})
    with pytest.raises(RecipeError, match="mean needs 1 or 3 values"):
        ImagePreprocess.from_dict({"mean": [0.1, 0.2]})


def test_single_channel_images_need_color_l(tmp_path: Path) -> None:
    _write_images(tmp_path, 2)
    spec = [InputSpec("img", np.dtype(np.float32), ("N", 1, 8, 8))]
    with pytest.raises(CalibrationError, match='color = "L"'):
        load_samples(str(tmp_path), spec)
    pre = ImagePreprocess(size=8, crop=8, mean=(0.5,), std=(0.5,), color="L")
    assert load_samples(str(tmp_path), spec, preprocess=pre).feeds["img"].shape == (2, 1, 8, 8)


def test_initializer_only_graph_input_is_not_an_input() -> None:
    proto = conv_model()
    proto.graph.initializer.append(numpy_helper.from_array(np.zeros(1, np.float32), "x"))
    assert model_inputs(proto) == []
    with pytest.raises(CalibrationError, match="no inputs"):
        load_samples("random", [])
