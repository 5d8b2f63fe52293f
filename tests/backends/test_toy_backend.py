"""A target added in one file: a toy backend registered here builds end to end through ``dsqc build``
with no edit elsewhere — it is listed in ``--target``'s help, its ``-B`` options are parsed by the one
option parser, its profile drives the plan, its QDQ hook runs, it lowers once and its summary prints
(issue 14, items 1 and 6); report.html shows its own check and measured rows and a "how to run it" (the
default one, naming its files), and the fleet index its one-phrase check."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import onnx
import pytest

import dsqc.backends.registry as registry
from dsqc.backends.registry import (
    Backend,
    BackendOutput,
    CheckRow,
    Lowered,
    LoweringJob,
    ReportView,
    register,
)
from dsqc.batch.summary import summarize_bundle
from dsqc.driver.build_types import BuildResult
from dsqc.driver.cli import main
from dsqc.quant.profile import TargetProfile
from dsqc.quant.spec import QuantPlan


def _count_dequantize(proto: onnx.ModelProto, plan: QuantPlan) -> onnx.ModelProto:
    plan.notes.append(f"toy: {sum(n.op_type == 'DequantizeLinear' for n in proto.graph.node)} DQ nodes")
    return proto


# Symmetric int8 on Gemm only: unlike every built-in target, a Conv stays float.
TOY_PROFILE = TargetProfile(name="toy", activation_dtype="int8", symmetric_activations=True,
                            compute_ops=frozenset({"Gemm"}), quantize_outputs=False, verify_fused=False,
                            int4_weights=False, finish_qdq=_count_dequantize)


@dataclass(frozen=True)
class ToyOptions:
    greeting: str = "hello"
    shout: bool = False


@dataclass
class ToyLowered(Lowered):
    text: str = ""


class ToyBackend(Backend):
    name = "toy"
    description = "a text file listing the quantized model's Q/DQ nodes"
    profile = TOY_PROFILE
    options = ToyOptions
    lowerings = 0

    def lower(self, job: LoweringJob) -> ToyLowered:
        type(self).lowerings += 1
        opts = ToyOptions(**self.parse_options(job.options))
        model = job.qdq if job.qdq is not None else job.fp32
        qdq = [n.name for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
        greeting = opts.greeting.upper() if opts.shout else opts.greeting
        return ToyLowered(job, metrics={"toy": {"qdq_nodes": len(qdq), "greeting": greeting}},
                          notes=[f"toy: {greeting}"], text="\n".join(qdq) + "\n")

    def write(self, lowered: Lowered, out: Path) -> BackendOutput:
        assert isinstance(lowered, ToyLowered)
        path = Path(f"{lowered.job.name}.toy.txt")
        (out / path).write_text(lowered.text)
        return BackendOutput([path], dict(lowered.metrics), list(lowered.notes))

    def summary_lines(self, result: BuildResult) -> list[str]:
        m = result.metrics["toy"]
        return [f"toy: {m['qdq_nodes']} Q/DQ nodes, greeting {m['greeting']}"]

    def report_view(self, report: dict) -> ReportView:
        m = report["metrics"]["toy"]
        return ReportView(checks=[CheckRow("toy Q/DQ listing", "pass", f"{m['qdq_nodes']} nodes listed")],
                          measured=[("toy greeting", m["greeting"])],
                          fleet_check=f"toy listed {m['qdq_nodes']}")


@pytest.fixture
def toy(monkeypatch: pytest.MonkeyPatch) -> type[ToyBackend]:
    """``ToyBackend`` registered for this test only (the registry is restored afterwards)."""
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    ToyBackend.lowerings = 0
    return register(ToyBackend)


def test_toy_target_is_listed_in_the_help(toy: type[ToyBackend], capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["build", "--help"])
    help_text = " ".join(capsys.readouterr().out.split())
    assert "one of hls, onnx, tflite, toy, trt" in help_text


def test_toy_target_builds_end_to_end(toy: type[ToyBackend], conv_bn_path: Path, conv_bn_npz: Path,
                                      tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    code = main(["build", str(conv_bn_path), "--target", "toy", "--calib", str(conv_bn_npz), "-B",
                 "greeting=hi", "-B", "shout=true", "--no-latency", "-o", str(out)])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    assert toy.lowerings == 1
    assert "warning: toy: HI" in captured.err
    report = json.loads((out / "report.json").read_text())
    assert report["artifacts"] == ["conv_bn.toy.txt", "report.json", "report.html", "manifest.json"]
    nodes, tensors = report["plan"]["nodes"], report["plan"]["tensors"]
    assert nodes["fc"]["precision"] == "int8" and nodes["conv"]["precision"] == "fp32"
    activations = [s for name, s in tensors.items() if s["dtype"] == "int8" and name != "fc_w"]
    assert activations and all(s["zero_point"] in (0, [0]) for s in activations)  # symmetric, as profiled
    written = (out / "conv_bn.toy.txt").read_text().split()
    assert f"toy: {report['metrics']['toy']['qdq_nodes']} Q/DQ nodes, greeting HI" in captured.out
    assert any(note.startswith("toy: ") and note.endswith(" DQ nodes") for note in report["plan"]["notes"])
    assert len(written) == report["metrics"]["toy"]["qdq_nodes"] > 0
    count = report["metrics"]["toy"]["qdq_nodes"]
    html = (out / "report.html").read_text()
    checks = html.split("<h3>Target checks</h3>", 1)[1].split("</table>", 1)[0]
    assert "<td>toy Q/DQ listing</td>" in checks and f"<td>{count} nodes listed</td>" in checks
    latency = html.split('id="latency"', 1)[1].split("</section>", 1)[0]
    assert "<td>toy greeting</td><td>HI</td>" in latency
    run = html.split('id="run"', 1)[1].split("</section>", 1)[0]
    assert "a text file listing the quantized model&#x27;s Q/DQ nodes" in run
    assert "<code>conv_bn.toy.txt</code>" in run and "No instructions" not in run
    assert summarize_bundle(out)["target_check"] == f"toy listed {count}"


def test_toy_target_rejects_an_unknown_option(toy: type[ToyBackend], conv_bn_path: Path, conv_bn_npz: Path,
                                              tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = main(["build", str(conv_bn_path), "--target", "toy", "--calib", str(conv_bn_npz), "-B",
                 "colour=blue", "-o", str(tmp_path / "out")])
    assert code == 2 and not (tmp_path / "out").exists()
    assert capsys.readouterr().err.strip() == ("dsqc: error: toy: unknown target option 'colour' "
                                               "(-B colour=…); options of toy: greeting, shout")
