"""``calibrate``: streaming through ORT, batch-size independence, errors, progress and logging."""

from __future__ import annotations

import logging

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from calib_models import ACTIVATIONS, conv_model, nonfinite_model, reshape_batch1_model

from dsqc.calibration import SampleSet, calibrate, load_samples, model_inputs
from dsqc.errors import CalibrationError

METHODS = ["minmax", "percentile", "entropy", "mse"]


def samples_for(proto: onnx.ModelProto, n: int = 20) -> SampleSet:
    return load_samples("random", model_inputs(proto), limit=n)


def reference_activations(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    del model.graph.output[:]
    names = [n for n in ACTIVATIONS if n != "x"]
    for name in names:
        model.graph.output.add().name = name
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return dict(zip(names, sess.run(names, feeds), strict=True)) | {"x": feeds["x"]}


def test_minmax_equals_numpy_over_all_samples() -> None:
    proto = conv_model()
    samples = samples_for(proto)
    stats = calibrate(proto, ACTIVATIONS, samples, method="minmax", batch_size=3)
    ref = reference_activations(proto, samples.feeds)
    assert set(stats) == set(ACTIVATIONS)
    for name, arr in ref.items():
        s = stats[name]
        assert s.method == "minmax" and s.name == name
        assert s.min == pytest.approx(float(arr.min()), abs=1e-6)
        assert s.max == pytest.approx(float(arr.max()), abs=1e-6)
        assert (s.lo, s.hi) == (s.min, s.max)
    assert stats["r1"].lo == 0.0


@pytest.mark.parametrize("method", METHODS)
def test_batch_1_and_8_give_the_same_ranges(method: str) -> None:
    proto = conv_model()
    samples = samples_for(proto, 24)
    one = calibrate(proto, ACTIVATIONS, samples, method=method, batch_size=1)
    eight = calibrate(proto, ACTIVATIONS, samples, method=method, batch_size=8)
    for name in ACTIVATIONS:
        a, b = one[name], eight[name]
        assert a.lo == pytest.approx(b.lo, abs=1e-6) and a.hi == pytest.approx(b.hi, abs=1e-6), name
        assert a.min == pytest.approx(b.min, abs=1e-6) and a.max == pytest.approx(b.max, abs=1e-6), name
        assert a.lo <= a.hi


def test_fixed_batch_one_model_runs() -> None:
    proto = conv_model(batch=1)
    samples = samples_for(proto, 5)
    stats = calibrate(proto, ["r1", "y"], samples, method="entropy", batch_size=8)
    assert stats["r1"].lo == 0.0 and stats["y"].hi > 0.0


def test_hard_coded_batch_falls_back_to_one(caplog: pytest.LogCaptureFixture) -> None:
    proto = reshape_batch1_model()
    samples = samples_for(proto, 6)
    with caplog.at_level(logging.INFO):
        stats = calibrate(proto, ["y"], samples, method="minmax", batch_size=4)
    assert stats["y"].max == pytest.approx(float(np.maximum(samples.feeds["x"], 0).max()))
    assert "calibrating with batch 1" in caplog.text


def test_constant_and_unknown_tensors_are_named() -> None:
    proto = conv_model()
    samples = samples_for(proto, 2)
    with pytest.raises(CalibrationError, match="tensor 'w1' is a constant"):
        calibrate(proto, ["r1", "w1"], samples)
    with pytest.raises(CalibrationError, match="tensor 'nope' is not produced"):
        calibrate(proto, ["nope"], samples)


def test_non_float_tensors_are_skipped() -> None:
    proto = conv_model()
    stats = calibrate(proto, ["shape", "r2"], samples_for(proto, 2), method="minmax")
    assert list(stats) == ["r2"]


def test_nonfinite_activations() -> None:
    proto = nonfinite_model()
    samples = samples_for(proto, 8)
    stats = calibrate(proto, ["y"], samples, method="entropy")
    assert stats["y"].nonfinite == int((samples.feeds["x"] <= 0).sum())
    assert np.isfinite([stats["y"].lo, stats["y"].hi]).all()
    with pytest.raises(CalibrationError, match="tensor 'nan' held no finite value"):
        calibrate(proto, ["nan"], samples)


def test_callers_model_is_unchanged() -> None:
    proto = conv_model()
    before = proto.SerializeToString()
    calibrate(proto, ["r1", "a"], samples_for(proto, 2))
    assert proto.SerializeToString() == before


def test_missing_feed_and_bad_method() -> None:
    proto = conv_model()
    with pytest.raises(CalibrationError, match="no data for model input 'x'"):
        calibrate(proto, ["r1"], SampleSet({"z": np.zeros((2, 3, 8, 8), np.float32)}, "t"))
    with pytest.raises(Exception, match="unknown calibration method"):
        calibrate(proto, ["r1"], samples_for(proto, 2), method="kl")


def test_progress_bar_and_log(capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture) -> None:
    proto = conv_model()
    samples = samples_for(proto, 4)
    calibrate(proto, ["r1"], samples, batch_size=2)  # stderr is not a TTY here: no bar
    assert capsys.readouterr().err == ""
    with caplog.at_level(logging.INFO, logger="dsqc.calibration"):
        calibrate(proto, ["r1", "a"], samples, batch_size=2, progress=True)
    err = capsys.readouterr().err
    assert err.startswith("\rcalibrating [") and "4/4 samples" in err and err.endswith("\n")
    assert "calibrated 2 tensors on 4 samples" in caplog.text


def test_spilled_weights_match_in_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    from dsqc.calibration import ort_session

    proto = conv_model()
    assert any(len(t.raw_data) >= 1024 for t in proto.graph.initializer)  # the spill path is used
    samples = samples_for(proto, 6)
    fast = calibrate(proto, ACTIVATIONS, samples, method="mse")
    monkeypatch.setattr(ort_session, "SPILL_WEIGHTS", False)
    slow = calibrate(proto, ACTIVATIONS, samples, method="mse")
    assert fast == slow


def test_fixed_batch_four_drops_the_remainder(caplog: pytest.LogCaptureFixture) -> None:
    proto = conv_model(batch=4)
    samples = samples_for(proto, 10)
    with caplog.at_level(logging.INFO, logger="dsqc.calibration"):
        stats = calibrate(proto, ["x"], samples, method="minmax", batch_size=3)
    assert stats["x"].max == float(samples.feeds["x"][:8].max())
    assert "the last 2 samples are not used" in caplog.text and "on 8 samples" in caplog.text
    with pytest.raises(CalibrationError, match="fixed to 4, got 3 samples"):
        calibrate(proto, ["x"], samples.take(3))


def test_spill_folder_is_private_aligned_and_removed_with_the_session() -> None:
    import gc
    from pathlib import Path

    from dsqc.calibration.ort_session import output_session

    proto = conv_model()
    session = output_session(proto, ["r1"], {})
    folder = Path(session._model_path).parent
    weights = folder / "weights.bin"
    assert weights.stat().st_size >= 1024 and folder.name.startswith("dsqc-calib-")
    stubs = onnx.load(str(folder / "model.onnx"), load_external_data=False).graph.initializer
    offsets = [int(e.value) for t in stubs for e in t.external_data if e.key == "offset"]
    assert offsets and all(o % 4096 == 0 for o in offsets)
    del session
    gc.collect()
    assert not folder.exists()


def test_unwritable_temp_folder_falls_back_to_in_memory_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    import tempfile

    def refuse(*args: object, **kwargs: object) -> str:
        raise PermissionError("read-only")

    proto = conv_model()
    samples = samples_for(proto, 6)
    spilled = calibrate(proto, ACTIVATIONS, samples, method="minmax")
    monkeypatch.setattr(tempfile, "mkdtemp", refuse)
    assert calibrate(proto, ACTIVATIONS, samples, method="minmax") == spilled


def test_wide_tensors_shrink_the_batch_not_the_answer(monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """Sample 0 runs alone and measures the requested tensors; batches then fit ``EXPOSED_BYTES``."""
    from dsqc.calibration import runner

    proto = conv_model()
    samples = samples_for(proto, 12)
    wide = calibrate(proto, ACTIVATIONS, samples, method="entropy", batch_size=8)
    monkeypatch.setattr(runner, "EXPOSED_BYTES", 1)
    with caplog.at_level(logging.INFO, logger="dsqc.calibration"):
        narrow = calibrate(proto, ACTIVATIONS, samples, method="entropy", batch_size=8)
    assert "batches of 1 instead of 8" in caplog.text
    assert narrow == wide
