"""Build scripts and the engine step. TensorRT cannot be installed here: trtexec is replaced by a
script that records its arguments, and ``tensorrt`` by a stub with the same API surface, so these
tests check command lines and control flow, not TensorRT itself."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from trt_models import residual_cnn, save_with_calib

from dsqc.backends.trt.engine import tensorrt_status
from dsqc.backends.trt.scripts import BundleFiles, render_build_py, render_build_sh
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build

FILES = BundleFiles(name="my net", qdq="my net.trt.onnx", fp32="my net.fp32.onnx", cache="calibration.cache",
                    engine="my net.engine", shapes={"input:0": (1, 3, 8, 8)})

FAKE_TENSORRT = '''
import json, os
__version__ = "10.3.0"
LOG = os.environ["FAKE_TRT_LOG"]
def _log(*event):
    with open(LOG, "a") as f:
        f.write(json.dumps(event) + "\\n")
class Logger:
    WARNING, ERROR = 2, 1
    def __init__(self, level): pass
class NetworkDefinitionCreationFlag:
    STRONGLY_TYPED = 1
class MemoryPoolType:
    WORKSPACE = 0
class _Tensor:
    name, shape = "x", (-1, 4, 12, 12)
class _Network:
    num_inputs = 1
    def get_input(self, i): return _Tensor()
class _Profile:
    def set_shape(self, name, lo, opt, hi): _log("profile", name, list(lo), list(opt), list(hi))
class _Config:
    def set_memory_pool_limit(self, pool, size): _log("workspace", size)
    def add_optimization_profile(self, profile): pass
class Builder:
    def __init__(self, logger): pass
    def create_network(self, flags): _log("network", flags); return _Network()
    def create_builder_config(self): return _Config()
    def create_optimization_profile(self): return _Profile()
    def build_serialized_network(self, network, config): return b"ENGINE"
class OnnxParser:
    def __init__(self, network, logger): pass
    def parse_from_file(self, path): _log("parse", os.path.basename(path)); return True
    num_errors = 0
'''


@pytest.fixture
def fake_trt(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    pkg = tmp_path / "fake_trt"
    pkg.mkdir()
    (pkg / "tensorrt.py").write_text(FAKE_TENSORRT)
    log = tmp_path / "trt_calls.jsonl"
    monkeypatch.setenv("FAKE_TRT_LOG", str(log))
    monkeypatch.syspath_prepend(str(pkg))
    monkeypatch.delitem(sys.modules, "tensorrt", raising=False)
    return log


def _calls(log: Path) -> list[list[object]]:
    return [json.loads(line) for line in log.read_text().splitlines()]


def _run_sh(folder: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    fake = folder / "bin" / "trtexec"
    fake.parent.mkdir(exist_ok=True)
    fake.write_text('#!/usr/bin/env bash\nfor a in "$@"; do echo "$a"; done >> "$(dirname "$0")/args.txt"\n')
    fake.chmod(0o755)
    return subprocess.run(["bash", str(folder / "build_engine.sh"), *args], capture_output=True, text=True,
                          env={**os.environ, "TRTEXEC": str(fake), **env}, timeout=30)


def test_build_sh_trtexec_lines(tmp_path: Path) -> None:
    (tmp_path / "build_engine.sh").write_text(render_build_sh(FILES))
    (tmp_path / "calibration.cache").write_text("TRT-100300-EntropyCalibration2\nx: 3c008912\n")
    assert subprocess.run(["bash", "-n", str(tmp_path / "build_engine.sh")]).returncode == 0
    args = tmp_path / "bin" / "args.txt"
    assert _run_sh(tmp_path).returncode == 0
    assert args.read_text().splitlines() == ["--onnx=my net.trt.onnx", "--stronglyTyped",
                                             "--saveEngine=my net.engine", "--shapes='input:0':1x3x8x8"]
    args.unlink()
    assert _run_sh(tmp_path, "int8").returncode == 0
    assert args.read_text().splitlines()[:2] == ["--onnx=my net.trt.onnx", "--int8"]
    args.unlink()
    proc = _run_sh(tmp_path, "calib", TRT_VERSION="8.6.1")
    assert proc.returncode == 0, proc.stderr
    assert args.read_text().splitlines()[:3] == ["--onnx=my net.fp32.onnx", "--int8",
                                                 "--calib=calibration.local.cache"]
    assert (tmp_path / "calibration.local.cache").read_text() == "TRT-8601-EntropyCalibration2\nx: 3c008912\n"
    assert _run_sh(tmp_path, "fp4").returncode == 2


def test_build_py_without_tensorrt(tmp_path: Path) -> None:
    if tensorrt_status()[0]:
        pytest.skip("TensorRT is installed here")
    script = tmp_path / "build_engine.py"
    script.write_text(render_build_py(FILES))
    proc = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "needs TensorRT" in proc.stderr
    assert subprocess.run([sys.executable, str(script), "--help"], capture_output=True).returncode == 0


def test_build_py_drives_the_tensorrt_api(tmp_path: Path, fake_trt: Path) -> None:
    script = tmp_path / "build_engine.py"
    script.write_text(render_build_py(BundleFiles(name="m", qdq="m.trt.onnx", fp32="m.fp32.onnx", cache=None,
                                                  engine="m.engine", shapes={"x": (2, 4, 12, 12)})))
    env = {**os.environ, "PYTHONPATH": str(fake_trt.parent / "fake_trt")}
    proc = subprocess.run([sys.executable, str(script), "--workspace-mib", "64"], capture_output=True,
                          text=True, env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "m.engine").read_bytes() == b"ENGINE"
    assert _calls(fake_trt) == [["network", 2], ["parse", "m.trt.onnx"], ["workspace", 64 << 20],
                                ["profile", "x", [2, 4, 12, 12], [2, 4, 12, 12], [2, 4, 12, 12]]]


def test_dsqc_builds_the_engine_when_tensorrt_is_there(tmp_path: Path, fake_trt: Path) -> None:
    model, npz = save_with_calib(residual_cnn(), tmp_path, "net")
    result = build(BuildRequest(model=model, target="trt", out_dir=tmp_path / "out", calib=str(npz),
                                method="minmax", measure_latency=False,
                                backend_options={"require_engine": True}))
    assert "net.engine" in {str(p) for p in result.artifacts}
    assert (tmp_path / "out" / "net.engine").read_bytes() == b"ENGINE"
    assert result.metrics["trt"]["engine"]["built"] is True
    assert ["profile", "x", [1, 4, 12, 12], [1, 4, 12, 12], [1, 4, 12, 12]] in _calls(fake_trt)


def test_generated_script_is_the_engine_module() -> None:
    source = render_build_py(FILES)
    assert source.count("BUNDLE: dict[str, Any] = {") == 1
    assert '"shapes": {"input:0": [1, 3, 8, 8]}' in source
    compile(source, "build_engine.py", "exec")
    assert textwrap.dedent(source).startswith("# Generated by dsqc")
