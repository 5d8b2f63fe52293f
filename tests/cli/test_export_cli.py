"""``dsqc export`` (the console script, as a user runs it): modules in the current directory import
without PYTHONPATH, as with ``python -m``; ``--opset``, ``--static``, ``--dynamic-axes`` (issue 12,
item 5)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

pytest.importorskip("torch")

MYNETS = '''
import torch


class Cnn(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.fc = torch.nn.Linear(4 * 8 * 8, 10)

    def forward(self, x):
        return self.fc(torch.flatten(torch.relu(self.conv(x)), 1))


def cnn():
    torch.manual_seed(0)
    return Cnn(), torch.randn(2, 1, 8, 8)
'''
SCRIPT = Path(sys.executable).with_name("dsqc")


def _dsqc(cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return subprocess.run([str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def _dims(path: Path) -> list[int | str]:
    shape = onnx.load(path).graph.input[0].type.tensor_type.shape
    return [d.dim_param or d.dim_value for d in shape.dim]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "mynets.py").write_text(MYNETS)
    return tmp_path


@pytest.mark.skipif(not SCRIPT.exists(), reason="the dsqc console script is installed with the package")
def test_export_from_the_current_directory(project: Path) -> None:
    proc = _dsqc(project, "export", "mynets:cnn", "-o", "cnn.onnx")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "dsqc: exported mynets:cnn to cnn.onnx"
    model = onnx.load(project / "cnn.onnx")
    assert model.opset_import[0].version == 17 and _dims(project / "cnn.onnx") == ["batch", 1, 8, 8]

    proc = _dsqc(project, "export", "mynets:cnn", "-o", "static.onnx", "--opset", "13", "--static")
    assert proc.returncode == 0, proc.stderr
    assert onnx.load(project / "static.onnx").opset_import[0].version == 13
    assert _dims(project / "static.onnx") == [2, 1, 8, 8]  # the example's batch, as torch exports by default

    proc = _dsqc(project, "export", "mynets:cnn", "-o", "hw.onnx", "--dynamic-axes", "input:0,2,3;output:0")
    assert proc.returncode == 0, proc.stderr
    assert _dims(project / "hw.onnx") == ["batch", 1, "dim_2", "dim_3"]

    build = _dsqc(project, "-q", "build", "mynets:cnn", "--target", "onnx", "--precision", "fp32",
                  "-o", "out")
    assert build.returncode == 0, build.stderr
    assert (project / "out" / "cnn.fp32.onnx").exists()


@pytest.mark.skipif(not SCRIPT.exists(), reason="the dsqc console script is installed with the package")
@pytest.mark.parametrize(("args", "message"), [
    (("--dynamic-axes", "pixels:0"),
     "--dynamic-axes: 'pixels' is not an input or output name (names: input, output)"),
    (("--opset", "99"), "--opset 99: torch.onnx exports opsets 7..23; 17 is the default"),
])
def test_export_errors_are_one_line(project: Path, args: tuple[str, ...], message: str) -> None:
    proc = _dsqc(project, "export", "mynets:cnn", "-o", "x.onnx", *args)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [f"dsqc: error: {message}"]
    assert not (project / "x.onnx").exists()
