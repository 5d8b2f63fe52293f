"""The README says what the tool does now (issue 12, item 10): the demo tail is what the demo command
prints, the build-options table is one table, ``--help`` names the target options."""

from __future__ import annotations

import re
from pathlib import Path

import onnx
import pytest

import dsqc.backends.onnx.isa
import dsqc.quant.latency_guard
import dsqc.verify
from dsqc.driver.cli import main
from dsqc.verify import Timing

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
NUMBER = re.compile(r"\d+(\.\d+)?")


def _demo_block() -> list[str]:
    after = README.split("What it prints on this project's", 1)[1]
    return after.split("```\n", 2)[1].rstrip("\n").splitlines()


def _masked(lines: list[str]) -> list[str]:
    """Timing numbers vary from run to run, and the output's error metrics with the CPU's int8 kernels
    (ORT's AVX2, AVX-512 VNNI and AMX kernels round differently); everything else must match to the
    character."""
    measured = ("  logits ", "range method: ")
    # a number one digit wider moves the columns after it: runs of spaces count as one
    return [re.sub(" +", " ", NUMBER.sub("#", line)) if "latency" in line or line.startswith(measured)
            else line for line in lines]


def _int8_conv(proto: onnx.ModelProto) -> bool:
    dq_out = {o for n in proto.graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return any(n.op_type == "Conv" and n.input[0] in dq_out for n in proto.graph.node)


def test_demo_tail_is_what_the_demo_prints(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """``make demo``'s command, with the latency guard deciding as it does on this project's machine
    (int8 Conv slower than FP32) and its CPU (VNNI): the README's block is the output, timings aside."""
    def guard_clock(protos: list[onnx.ModelProto], feeds: object) -> list[Timing]:
        times = [1.05 if _int8_conv(p) else 0.92 for p in protos[1:]]  # the README's run
        return [Timing(1.0, 1.0)] + [Timing(t, t) for t in times]

    monkeypatch.setattr(dsqc.quant.latency_guard, "compare_latency", guard_clock)
    monkeypatch.setattr(dsqc.backends.onnx.isa, "host_isa", lambda: "vnni")  # the machine the README shows
    monkeypatch.setattr(dsqc.verify, "compare_latency", lambda protos, feeds: [Timing(0.05, 0.05)] * 2)
    monkeypatch.chdir(tmp_path)
    assert main(["build", str(ROOT / "models" / "mnist_cnn.onnx"), "--target", "onnx", "--calib", "mnist",
                 "-o", "out/demo"]) == 0
    out, err = capsys.readouterr()
    assert _masked(err.splitlines() + out.splitlines()) == _masked(_demo_block())


def test_build_options_are_one_table() -> None:
    table = README.split("| option | meaning |", 1)[1].split("\n\n", 1)[0]
    for option in ("`--precision int8\\|fp32`", "`--strict`", "`-B key=value`", "`--no-latency`"):
        assert f"\n| {option}" in table, option


def test_help_names_the_target_options(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    text = " ".join(capsys.readouterr().out.split())
    for option in ("clock_mhz=250", "parallelism=8", "io=float|int8", "trt_version", "--strict"):
        assert option in text, option
