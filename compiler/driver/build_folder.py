"""A finished ``dsqc build`` folder read back: its report, its plan, and which models ``dsqc debug`` replays.

Each backend states what its folder gives the debugger (``Backend.replay``); ORT runs all of it:

- ``onnx``: ``<name>.int8.onnx``, the canonical QDQ model; its plan refers to the normalized FP32 model.
- ``trt``: ``<name>.trt.onnx``, the lowered QDQ model the build verified (int32 bias DQs folded, float
  readers reading float); its plan refers to ``<name>.fp32.onnx`` (the FP32 model after boosters such
  as the activation shift), which the folder also holds.
- ``tflite``/``hls``: no QDQ model is written. The plan in ``report.json`` applied to the normalized FP32
  model is the canonical QDQ model their lowering started from and the build verified; the ``.tflite``
  interpreter and the C testbench are not run (the build's report has their own checks).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsqc.backends.registry import Replay, get_backend
from dsqc.calibration.sources import CALLABLE_RE
from dsqc.errors import DsqcError, RecipeError
from dsqc.quant.spec import NodeDecision, Precision, QuantPlan, QuantSpec

REPORT_NAME = "report.json"
_SAMPLES = re.compile(r" \(\d+ samples\).*$")


class BuildFolderError(DsqcError):
    """The folder is not a finished int8 dsqc build, or does not belong to the given model."""


@dataclass
class BuildFolder:
    path: Path
    report: dict[str, Any]
    target: str
    plan: QuantPlan
    qdq_path: Path | None  # the QDQ model the build verified, when the folder holds one
    source_path: Path | None  # the FP32 model the plan refers to, when the build wrote it
    replay: Replay = field(default_factory=Replay)

    @property
    def verification(self) -> dict[str, Any]:
        return dict(self.report.get("metrics", {}).get("verification") or {})

    @property
    def calibration(self) -> dict[str, Any]:
        return dict(self.report.get("metrics", {}).get("calibration") or {})

    def describe(self) -> str:
        """One line: what ``dsqc debug`` runs for this folder."""
        return self.replay.description.format(
            qdq=self.qdq_path.name if self.qdq_path else "-",
            source=self.source_path.name if self.source_path else "MODEL")

    def data_defaults(self) -> tuple[str | None, str | None]:
        """``(calib, eval_data)`` as the build used them, where the folder names them re-loadably: the
        built-in sets, ``module:function``, or a file/folder that exists from here. manifest.json keeps
        the specs as given (paths included), report.json only their descriptions (file names)."""
        given = _manifest_calibration(self.path)
        calib, eval_data = given.get("source"), given.get("eval_source")
        if isinstance(calib, str) and _reloadable(calib):
            return calib, eval_data if isinstance(eval_data, str) and _reloadable(eval_data) else None
        calib = _base(self.calibration.get("source"))
        held_out = _base(self.calibration.get("eval_source"))
        calib = calib if calib and _reloadable(calib) else None
        eval_data = held_out if held_out and held_out != _base(self.calibration.get("source")) else None
        if eval_data and not _reloadable(eval_data):
            return calib, None
        return calib, eval_data


def read_build(path: Path) -> BuildFolder:
    """Read ``path/report.json`` and locate the models; every problem is one ``BuildFolderError`` line."""
    if not path.is_dir():
        raise BuildFolderError(f"{path}: no such folder; give the -o folder of a finished dsqc build")
    report_path = path / REPORT_NAME
    if not report_path.is_file():
        raise BuildFolderError(f"{path}: no {REPORT_NAME}, so not a dsqc build folder; give the -o folder "
                               "of 'dsqc build'")
    try:
        report = json.loads(report_path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BuildFolderError(f"{report_path}: unreadable ({type(exc).__name__}); rebuild the folder") \
            from None
    if not isinstance(report, dict) or "target" not in report or "dsqc_version" not in report:
        raise BuildFolderError(f"{report_path}: not a dsqc build report (no 'target'/'dsqc_version')")
    target = str(report["target"])
    if report.get("precision") != "int8" or not report.get("plan"):
        raise BuildFolderError(f"{path}: built with --precision {report.get('precision')}: nothing is "
                               "quantized to debug; build with --precision int8")
    plan = plan_from_dict(report["plan"], report_path)
    if not plan.tensors:
        raise BuildFolderError(f"{report_path}: the plan quantizes no tensor; nothing to debug")
    artifacts = [Path(a) for a in report.get("artifacts", [])]
    replay = _replay(target)
    qdq = _artifact(path, artifacts, replay.qdq_suffix)
    source = _artifact(path, artifacts, replay.source_suffix)
    return BuildFolder(path, report, target, plan, qdq, source, replay)


def _replay(target: str) -> Replay:
    """What the target's backend says its folder holds; a target not registered here: the plan on MODEL."""
    try:
        return get_backend(target).replay
    except RecipeError:
        return Replay()


def _artifact(folder: Path, artifacts: list[Path], suffix: str | None) -> Path | None:
    if suffix is None:
        return None
    named = [a for a in artifacts if a.name.endswith(suffix)]
    if not named:
        raise BuildFolderError(f"{folder}/{REPORT_NAME} lists no *{suffix} artifact; rebuild the folder")
    path = folder / named[0]
    if not path.is_file():
        raise BuildFolderError(f"{path}: listed in {REPORT_NAME} but missing; rebuild the folder")
    return path


def plan_from_dict(body: Any, where: Path) -> QuantPlan:
    """The inverse of ``QuantPlan.to_dict`` (report.json's ``plan``)."""
    try:
        tensors = {name: QuantSpec(s["dtype"], s["scale"], s["zero_point"], s.get("axis"),
                                   s.get("block_size"), bool(s.get("narrow", False)), s.get("limit"))
                   for name, s in body["tensors"].items()}
        nodes = {name: NodeDecision(Precision(d["precision"]), str(d.get("reason", "")),
                                    bool(d.get("integer_only", False)), d.get("activations") == "int16")
                 for name, d in body["nodes"].items()}
        folded = {str(k): str(v) for k, v in body.get("folded_activations", {}).items()}
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise BuildFolderError(f"{where}: malformed plan ({type(exc).__name__}: {exc}); rebuild the folder") \
            from None
    return QuantPlan(tensors, nodes, folded, list(body.get("notes", [])))


def _manifest_calibration(folder: Path) -> dict[str, Any]:
    """The bundle manifest's calibration provenance ({} where the folder has none or it is unreadable)."""
    try:
        body = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return {}
    calibration = body.get("calibration") if isinstance(body, dict) else None
    return calibration if isinstance(calibration, dict) else {}


def _base(source: Any) -> str | None:
    """``"mnist (64 samples)"`` / ``"calib.npz (300 samples), last 60"`` → the spec before the count."""
    return _SAMPLES.sub("", source) or None if isinstance(source, str) else None


def _reloadable(spec: str) -> bool:
    return spec in ("mnist", "random") or Path(spec).exists() or bool(CALLABLE_RE.fullmatch(spec))
