"""The rebuild command written into plan.recipe.toml works as printed, from any directory (issue 12,
item 8): file arguments are absolute; a module:function spec gets a ``cd`` to where the build ran."""

from __future__ import annotations

import shlex
import shutil
from pathlib import Path

import pytest

from dsqc.driver.build_types import BuildRequest, rebuild_command
from dsqc.driver.cli import main

MNIST = Path(__file__).resolve().parents[2] / "models" / "mnist_cnn.onnx"


def test_printed_rebuild_command_runs_from_another_directory(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    work, elsewhere = tmp_path / "work", tmp_path / "elsewhere"
    work.mkdir()
    elsewhere.mkdir()
    shutil.copy(MNIST, work / "m.onnx")
    monkeypatch.chdir(work)  # relative paths, as a user types them
    assert main(["-q", "build", "m.onnx", "--target", "onnx", "--calib", "mnist", "--calib-samples", "64",
                 "--eval-samples", "16", "--sensitivity-samples", "8", "--accuracy-budget", "sqnr:20",
                 "-o", "out"]) == 0
    lines = (work / "out" / "plan.recipe.toml").read_text().splitlines()
    edit = ("# Edit a precision (int4 | int8 | int16 | fp16 | fp32, as the target takes them) and rebuild "
            "with:")
    hint = lines[lines.index(edit) + 1]
    argv = shlex.split(hint.lstrip("# "))
    assert argv[:3] == ["dsqc", "build", str(work / "m.onnx")]
    assert argv[argv.index("--recipe") + 1] == str(work / "out" / "plan.recipe.toml")
    assert argv[argv.index("--calib-samples") + 1] == "64"
    monkeypatch.chdir(elsewhere)
    (work / "out" / "report.json").unlink()
    assert main(["-q", *argv[1:]]) == 0
    assert (work / "out" / "report.json").exists()


def test_module_specs_get_a_cd(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    request = BuildRequest(model=Path("/scratch/cnn.onnx"), target="tflite", out_dir=Path("out"),
                           calib="mydata:samples", model_label="mynets:cnn", backend_options={"io": "int8"})
    command = rebuild_command(request, Path("out/plan.recipe.toml"))
    assert command == (f"cd {tmp_path} && dsqc build mynets:cnn --target tflite --calib mydata:samples "
                       f"-B io=int8 --recipe {tmp_path}/out/plan.recipe.toml -o {tmp_path}/out")
