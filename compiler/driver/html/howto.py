"""Per-target "how to run it": the commands a hardware team types, with this bundle's own file names."""

from __future__ import annotations

import shlex
from html import escape
from typing import Any


def _first(artifacts: list[str], suffix: str) -> str | None:
    return next((a for a in artifacts if a.endswith(suffix)), None)


def _pre(text: str) -> str:
    return f"<pre>{escape(text)}</pre>"


def howto_html(report: dict[str, Any]) -> str:
    """HTML for one target's run instructions (every file name escaped)."""
    target = str(report.get("target"))
    artifacts = [str(a) for a in report.get("artifacts", [])]
    renderer = {"onnx": _onnx, "trt": _trt, "tflite": _tflite, "hls": _hls}.get(target)
    return renderer(artifacts, report) if renderer else "<p>No instructions for this target.</p>"


def _onnx(artifacts: list[str], report: dict[str, Any]) -> str:
    model = _first(artifacts, ".int8.onnx") or _first(artifacts, ".fp32.onnx") or "model.onnx"
    isa = (report.get("metrics", {}).get("onnx") or {}).get("isa")
    code = (f"import numpy as np, onnxruntime as ort\n"
            f"session = ort.InferenceSession({model!r}, providers=['CPUExecutionProvider'])\n"
            "name = session.get_inputs()[0].name\n"
            "x = np.load('check/input_0.npy')            # the bundle's own held-out inputs\n"
            "print(session.run(None, {name: x})[0])\n")
    note = f"<p class='muted'>Weights were sized for CPUs of kind <code>{escape(str(isa))}</code> " \
           "(<code>-B isa=</code>).</p>" if isa else ""
    return "<p>ONNX Runtime (any execution provider that runs Q/DQ models):</p>" + _pre(code) + note


def _trt(artifacts: list[str], report: dict[str, Any]) -> str:
    qdq = _first(artifacts, ".trt.onnx") or "model.trt.onnx"
    engine = qdq.removesuffix(".trt.onnx") + ".engine"
    shell = (f"trtexec --onnx={shlex.quote(qdq)} --stronglyTyped --saveEngine={shlex.quote(engine)}\n"
             "# or, with this bundle's script (explicit INT8, TensorRT 10.x/11.x):\n./build_engine.sh\n"
             f"trtexec --loadEngine={shlex.quote(engine)}          # time it")
    return ("<p>On a machine with TensorRT (the Q/DQ model is the INT8 path; no calibrator needed):</p>"
            + _pre(shell) + "<p class='muted'><code>build_engine.sh calib</code> builds implicit INT8 from "
            "the FP32 model and <code>calibration.cache</code> (TensorRT ≤ 10 only).</p>")


def _tflite(artifacts: list[str], report: dict[str, Any]) -> str:
    model = _first(artifacts, ".int8.tflite") or _first(artifacts, ".fp32.tflite") or "model.tflite"
    code = ("import numpy as np\nfrom ai_edge_litert.interpreter import Interpreter\n"
            f"it = Interpreter(model_path={model!r}, num_threads=1)   # XNNPACK by default\n"
            "it.allocate_tensors()\n"
            "inp, out = it.get_input_details()[0], it.get_output_details()[0]\n"
            "x = np.load('check/input_0.npy')[:1]    # one held-out sample from this bundle\n"
            "it.set_tensor(inp['index'], x.astype(inp['dtype']))\n"
            "it.invoke()\nprint(it.get_tensor(out['index']))\n")
    android = ("// Android (Kotlin), LiteRT's org.tensorflow.lite.Interpreter\n"
               "// (loadModelFile: your app's memory-mapped asset loader)\n"
               f"val interpreter = Interpreter(loadModelFile(\"{model}\"),\n"
               "                              Interpreter.Options().setNumThreads(4))\n"
               "interpreter.run(input, output)\n")
    return "<p>Python (LiteRT):</p>" + _pre(code) + "<p>On the device:</p>" + _pre(android)


def _hls(artifacts: list[str], report: dict[str, Any]) -> str:
    hls = report.get("metrics", {}).get("hls") or {}
    options = hls.get("options") or {}
    top = hls.get("top", "top")
    shell = ("cd hls\nmake csim                # gcc C simulation: the testbench checks every vector "
             "bit for bit\n"
             "vitis_hls -f build.tcl   # Vitis HLS: csim, csynth, cosim, export IP "
             f"(part {options.get('part', '?')}, {options.get('clock_mhz', '?')} MHz)\n")
    return (f"<p>C99 project in <code>hls/</code>, top function <code>{escape(str(top))}</code>, interface "
            f"<code>{escape(str(options.get('interface', '?')))}</code>:</p>" + _pre(shell)
            + "<p class='muted'>Intel HLS: compile <code>hls/firmware/*.c</code> with i++ and the same "
            "testbench; <code>hls/README.md</code> describes the interface and the estimates.</p>")
