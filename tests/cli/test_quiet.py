"""``-q`` is errors only: no summary, no warnings, and neither ONNX Runtime's C++ warnings nor LiteRT's
"Created TensorFlow Lite XNNPACK delegate" line, which the C++ runtimes write to fd 2 (issue 12, item 4)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path


def _dsqc(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "dsqc", *args], capture_output=True, text=True,
                          timeout=300)


def test_quiet_tflite_build_prints_nothing(conv_bn_path: Path, tmp_path: Path) -> None:
    # random calibration data: the build has a warning to hide; tflite: LiteRT creates interpreters
    build = ("build", str(conv_bn_path), "--target", "tflite", "--calib", "random", "--calib-samples", "40",
             "--eval-samples", "8")
    quiet = _dsqc("-q", *build, "-o", str(tmp_path / "q"))
    assert quiet.returncode == 0, quiet.stderr
    assert quiet.stdout == "" and quiet.stderr == ""
    assert (tmp_path / "q" / "conv_bn.int8.tflite").exists()

    loud = _dsqc("-vv", *build, "-o", str(tmp_path / "v"))
    assert loud.returncode == 0
    assert "warning: CALIBRATED ON RANDOM DATA" in loud.stderr and "verdict:" in loud.stdout
    # the runtime's line is not lost: it is in the debug log, tagged, instead of raw on the terminal
    assert "LiteRT: INFO: Created TensorFlow Lite XNNPACK delegate for CPU." in loud.stderr
    assert "\nINFO: Created TensorFlow Lite" not in "\n" + loud.stderr


def test_quiet_errors_still_print(tmp_path: Path) -> None:
    proc = _dsqc("-q", "build", str(tmp_path / "missing.onnx"), "--target", "onnx", "-o", str(tmp_path / "o"))
    assert proc.returncode == 2 and proc.stderr.startswith("dsqc: error: ") and proc.stdout == ""


PREPROCESS = textwrap.dedent("""
    import numpy as np
    import onnxruntime as ort
    from onnx import TensorProto, helper

    def samples():
        \"\"\"Calibration feeds through a preprocessing model run with ORT's default session options
        (a user's code): its declared output shape is off, so ORT warns at load from C++.\"\"\"
        graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "prep",
                                  [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 16, 16])],
                                  [helper.make_tensor_value_info("y", TensorProto.FLOAT, [7, 3, 16, 16])])
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        model.ir_version = 8
        prep = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
        rng = np.random.default_rng(0)
        for _ in range(5):
            x = rng.normal(size=(8, 3, 16, 16)).astype(np.float32)
            yield {"input": prep.run(None, {"x": x})[0]}
""")


def test_onnxruntime_cpp_warnings_are_silenced(conv_bn_path: Path, tmp_path: Path) -> None:
    """ORT's process-wide logger is set to errors: C++ warnings from sessions dsqc does not create
    (a user's calibration generator here) no longer reach the terminal."""
    (tmp_path / "prep.py").write_text(PREPROCESS)
    build = ["-m", "dsqc", "-q", "build", str(conv_bn_path), "--target", "onnx",
             "--calib", "prep:samples", "--no-latency", "-o", str(tmp_path / "out")]
    proc = subprocess.run([sys.executable, *build], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == "" and proc.stdout == ""
    plain = subprocess.run([sys.executable, "-c", PREPROCESS + "\nlist(samples())"], capture_output=True,
                           text=True, timeout=120, check=True)
    assert "[W:onnxruntime" in plain.stderr  # what the user would have seen: the warning is real
