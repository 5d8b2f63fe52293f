"""The MNIST CNN as C: all 1,000 held-out digits through `make csim` (bit-exact against the reference,
accuracy within 0.3 pt of FP32). Slow: ~1,000 vectors compiled into the testbench."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import onnxruntime as ort
import pytest
from _hls_helpers import emit
from _integer_models import case

from dsqc.backends.hls.csim import run_csim

log = logging.getLogger(__name__)


@pytest.mark.slow
@pytest.mark.skipif(not shutil.which("gcc") or not shutil.which("make"), reason="gcc/make not installed")
def test_mnist_c_accuracy_on_held_out_digits(tmp_path: Path) -> None:
    c = case("mnist", n_eval=1000)
    assert c.labels is not None and len(c.labels) == 1000
    result = emit(c, tmp_path, csim=False, tb_vectors=1000)
    sim = run_csim(tmp_path / "hls")
    assert sim.passed and sim.vectors == 1000 and sim.mismatches == 0
    assert sim.outputs is not None and sim.outputs.shape == (1000, 10)
    acc_c = float((sim.outputs.argmax(axis=1) == c.labels).mean())
    session = ort.InferenceSession(c.fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    acc_fp32 = float((session.run(None, c.eval_feeds)[0].argmax(axis=1) == c.labels).mean())
    lsb = result.metrics["hls"]["lsb_vs_ort"]
    log.info("MNIST 1000 held-out digits: C %.4f, FP32 %.4f; LSB vs ORT %s", acc_c, acc_fp32, lsb)
    assert abs(acc_c - acc_fp32) <= 0.003 + 1e-9
