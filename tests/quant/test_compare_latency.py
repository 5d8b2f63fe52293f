"""``compare_latency`` times real ORT sessions side by side, in CPU time of the calling thread."""

from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.verify import compare_latency


def _matmul_chain(layers: int, width: int = 256) -> onnx.ModelProto:
    rng = np.random.default_rng(layers)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"]))
        prev = f"h{i}"
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [64, width])
    y = helper.make_tensor_value_info(prev, TensorProto.FLOAT, [64, width])
    graph = helper.make_graph(nodes, "chain", [x], [y], inits)
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_twenty_times_the_work_takes_more_cpu_time_in_either_order() -> None:
    small, large = _matmul_chain(1), _matmul_chain(20)
    feeds = {"x": np.ones((64, 256), np.float32)}
    a, b = compare_latency([small, large], feeds, rounds=2, runs=3)
    c, d = compare_latency([large, small], feeds, rounds=2, runs=3)
    assert 0 < a.cpu_ms < b.cpu_ms and 0 < d.cpu_ms < c.cpu_ms
    assert b.cpu_ms > 5 * a.cpu_ms and b.wall_ms > 5 * a.wall_ms  # one thread: CPU time tracks the work
