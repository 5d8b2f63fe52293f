"""The tflite target's lines in the build summary and its speed warning, from ``metrics["tflite"]``."""

from __future__ import annotations

from typing import Any

from dsqc.detection import detection_line
from dsqc.driver.report import SLOWER


def summary_lines(m: dict[str, Any]) -> list[str]:
    """LiteRT's verification, the comparison with dsqc's integer reference, and the timing."""
    v = m.get("verification")
    if not v:
        return []
    line = f"tflite (LiteRT interpreter, XNNPACK): min SQNR {v['min_sqnr_db']:.2f} dB"
    if v.get("top1_agreement") is not None:
        line += f", top-1 agreement {v['top1_agreement'] * 100:.2f} %"
    if v.get("task"):
        line += f", {v['task'].get('metric', 'task')} {v['task'].get('quantized', float('nan')):.4f}"
    lines = [line, *_reference_lines((v.get("tensors") or {}).get("vs_integer_reference"))]
    if v.get("detections"):
        lines.append(f"  {detection_line(v['detections'])}")
    lat = m.get("latency_ms")
    if lat:
        speed = lat["speedup"]
        versus = f"{speed:.2f}× faster" if speed >= 1 else f"{1 / max(speed, 1e-9):.2f}× SLOWER"
        lines.append(f"  latency 1 thread: float32 {lat['float32']:.3f} ms, int8 {lat['int8']:.3f} ms "
                     f"(int8 {versus})")
    return lines


def speed_warnings(m: dict[str, Any]) -> list[str]:
    """A warning with the ratio when the int8 .tflite ran slower than its float32 twin in LiteRT."""
    lat = m.get("latency_ms")
    if not lat or lat["speedup"] >= 1 / SLOWER:
        return []
    line = (f"the int8 .tflite ran {1 / max(lat['speedup'], 1e-9):.2f}× SLOWER than its float32 twin in "
            f"LiteRT here (1 thread, XNNPACK): {lat['int8']:.3f} vs {lat['float32']:.3f} ms")
    undelegated = (m.get("int8") or {}).get("undelegated_int8") or []
    if undelegated:  # MiniLM: 1.21× slower than float32 with them int8, 1.25× faster with them float
        line += (f"; {len(undelegated)} int8 op(s) XNNPACK does not take (BATCH_MATMUL of two activations, "
                 "SOFTMAX) split its graph: -B float_undelegated=true (the default) plans them float")
    return [line]


def _reference_lines(ref: dict[str, Any] | None) -> list[str]:
    """The LiteRT-vs-integer-reference line: tensors compared, or why there is no comparison."""
    if not ref:
        return []
    if "skipped" in ref:
        return [f"  vs dsqc integer reference: not compared ({ref['skipped']})"]
    if not ref.get("tensors"):
        return ["  vs dsqc integer reference: no int8 tensor to compare"]
    alone = ref.get("per_op") or {}
    each = (f"; each op fed LiteRT's own inputs: {alone['ops_exact']}/{alone['ops']} bit-exact, max "
            f"{alone['max_lsb']} LSB" + (f" ({alone['worst_op']})" if alone["max_lsb"] else "")
            + (f", {alone['not_compared']} ops not compared (an input LiteRT does not expose)"
               if alone.get("not_compared") else "")
            if alone.get("ops") else "")
    return [f"  vs dsqc integer reference: {ref['tensors_exact']}/{ref['tensors']} tensors bit-exact, "
            f"max {ref['max_lsb']} LSB{each}"]
