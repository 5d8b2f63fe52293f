"""dsqc's integer reference against ORT running the same QDQ model (graph optimizations off).

Each op alone (fed ORT's own int8 inputs) differs by at most 1 LSB — on ties, where ORT's float
requantization and the 31-bit fixed-point multiplier disagree. End to end the differences can add up
over layers; the counts are logged. With power-of-two scales every multiplier is exact and the
reference equals ORT bit for bit.
"""

from __future__ import annotations

import logging

import pytest
from _integer_models import case

from dsqc.integer import lower, quantize_inputs, run
from dsqc.integer.compare import compare_with_ort, per_op_with_ort

log = logging.getLogger(__name__)


@pytest.mark.parametrize("name", ["mnist", "resnet", "mobilenet"])
def test_each_op_within_one_lsb_of_ort(name: str) -> None:
    c = case(name)
    program = lower(c.qdq, name)
    stats = per_op_with_ort(c.qdq, program, c.eval_feeds)
    for node, s in stats.items():
        log.info("%s %s: %s", name, node, s)
        assert s["max_lsb"] <= 1, (node, s)
    off = sum(int(s["off_by_1"]) for s in stats.values())
    total = sum(int(s["values"]) for s in stats.values())
    assert off / total < 0.02


@pytest.mark.parametrize(("name", "min_exact"), [("mnist", 0.97), ("resnet", 0.97), ("mobilenet", 0.7)])
def test_end_to_end_lsb_counts(name: str, min_exact: float) -> None:
    c = case(name)
    program = lower(c.qdq, name)
    ref = run(program, quantize_inputs(program, c.eval_feeds))
    stats = compare_with_ort(c.qdq, program, c.eval_feeds, ref)
    log.info("%s end to end vs ORT: %s", name, stats)
    assert stats["float_requant"]["exact_fraction"] >= min_exact
    assert stats["float_requant"]["max_lsb"] <= 3


@pytest.mark.parametrize("name", ["resnet", "mobilenet"])
def test_power_of_two_scales_are_shift_only_and_exact(name: str) -> None:
    c = case(name, pow2=True)
    program = lower(c.qdq, name)
    shift_only = [op.requant.shift_only for op in program.ops if getattr(op, "requant", None) is not None]
    gap = [op for op in program.ops if op.onnx_op == "GlobalAveragePool"]
    assert sum(not s for s in shift_only) <= len(gap)  # only 1/(H·W) windows keep a multiplier
    ref = run(program, quantize_inputs(program, c.eval_feeds))
    stats = compare_with_ort(c.qdq, program, c.eval_feeds, ref)
    assert stats["float_requant"]["max_lsb"] == 0


def test_mnist_reference_accuracy_matches_fp32() -> None:
    import onnxruntime as ort

    c = case("mnist", n_eval=300)
    program = lower(c.qdq, "mnist")
    logits = run(program, quantize_inputs(program, c.eval_feeds))["logits"]
    fp32 = ort.InferenceSession(c.fp32.SerializeToString(), providers=["CPUExecutionProvider"])
    ref_fp32 = fp32.run(None, c.eval_feeds)[0]
    assert c.labels is not None
    acc_int = float((logits.argmax(1) == c.labels).mean())
    acc_fp32 = float((ref_fp32.argmax(1) == c.labels).mean())
    log.info("mnist 300 digits: integer reference %.4f, fp32 %.4f", acc_int, acc_fp32)
    assert acc_int >= acc_fp32 - 0.01
