"""``power_of_two_scales`` on a plan made without it: ``snap_to_pow2`` re-plans and re-inserts Q/DQ, a
pass run like any other (``--dump-ir``/``--check-each-pass`` see it). Tolerance: the snapped MNIST CNN
keeps ≥ 25 dB SQNR against FP32 on 64 held-out digits (the pow2 CLI build reaches 34 dB)."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from _integer_models import case
from onnx import numpy_helper

from dsqc.backends.hls.pow2 import is_pow2_plan, snap_to_pow2
from dsqc.pass_infra import PassContext


def _run(proto: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # reference Q/DQ
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, feeds)[0], np.float64)


def test_snap_to_pow2_runs_in_the_pass_context(tmp_path: Path) -> None:
    c = case("mnist")
    assert not is_pow2_plan(c.plan)
    with PassContext.for_build(dump_ir=tmp_path, check_each_pass=True).active():
        qdq, plan = snap_to_pow2(c.fp32, c.plan)
    assert is_pow2_plan(plan) and set(plan.tensors) == set(c.plan.tensors)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["001_InsertQDQ.onnx"]
    inits = {i.name: numpy_helper.to_array(i) for i in qdq.graph.initializer}
    qdq_nodes = [n for n in qdq.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    scales = [inits[n.input[1]] for n in qdq_nodes]
    assert len(scales) >= 10
    assert all(math.frexp(float(s))[0] == 0.5 for a in scales for s in np.asarray(a).reshape(-1))
    ref, got = _run(c.fp32, c.eval_feeds), _run(qdq, c.eval_feeds)
    assert np.array_equal(got, _run(onnx.load(tmp_path / "001_InsertQDQ.onnx"), c.eval_feeds))
    sqnr = 10 * math.log10(float(np.sum(ref**2) / np.sum((ref - got) ** 2)))
    assert sqnr >= 25.0, sqnr
