"""Test helpers: canonical QDQ models for the tflite profile, parsing and isolated LiteRT runs.

``qdq_model`` runs dsqc's own planner and ``InsertQDQ`` with plain min/max ranges measured in ONNX
Runtime: the QDQ form the compiler emits, without the cost of the calibration observers.
``run_tflite_isolated`` loads a file in a child process, so a file LiteRT rejects (or aborts on)
cannot take the test process down. ``parse`` reads a file with the independent ``tflite`` package.
"""

from __future__ import annotations

import json
import pickle
import subprocess
import sys
from collections.abc import Sequence
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from dsqc.backends.tflite.profile import TFLITE_PROFILE
from dsqc.driver.pipeline import normalize as pipeline_normalize
from dsqc.ir import Model
from dsqc.pass_infra import PassManager
from dsqc.passes.insert_qdq import InsertQDQ
from dsqc.quant.planner import Range, finalize, place
from dsqc.quant.profile import TargetProfile
from dsqc.quant.recipe import Recipe
from dsqc.quant.spec import QuantPlan, QuantSpec

Feeds = dict[str, np.ndarray]


def normalize(proto: onnx.ModelProto) -> onnx.ModelProto:
    """dsqc's FP32 normalization (constant folding, Conv+BN fusion, ...)."""
    return pipeline_normalize(proto).model


def ranges(proto: onnx.ModelProto, names: Sequence[str], feeds: list[Feeds]) -> dict[str, Range]:
    model = onnx.ModelProto()
    model.CopyFrom(proto)
    existing = {o.name for o in model.graph.output}
    for name in names:
        if name not in existing:
            model.graph.output.append(onnx.ValueInfoProto(name=name))
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    lo = {n: np.inf for n in names}
    hi = {n: -np.inf for n in names}
    for f in feeds:
        for name, value in zip(names, sess.run(list(names), f), strict=True):
            lo[name] = min(lo[name], float(np.min(value)))
            hi[name] = max(hi[name], float(np.max(value)))
    return {n: Range(lo[n], hi[n]) for n in names}


def qdq_model(fp32: onnx.ModelProto, feeds: list[Feeds], profile: TargetProfile = TFLITE_PROFILE,
              recipe: Recipe | None = None, fixed_outputs: bool = False) -> tuple[onnx.ModelProto, QuantPlan]:
    """``fixed_outputs``: emulate a planner that honours ``profile.fixed_output_specs``."""
    recipe = recipe or Recipe(method="minmax")
    model = Model.from_proto(fp32)
    placement = place(model, profile, recipe)
    plan = finalize(model, placement, ranges(fp32, placement.activations, feeds), profile, recipe)
    if fixed_outputs:
        for node in model.graph.nodes:
            fixed = profile.fixed_output_specs.get(node.op)
            if fixed and node.outputs[0].name in plan.tensors:
                spec = QuantSpec("int8", np.float32(fixed[0]), np.int64(fixed[1]))
                plan.tensors[node.outputs[0].name] = spec
    out = PassManager([InsertQDQ(plan)]).run(model).model.to_proto()
    out.ir_version = fp32.ir_version
    return out, plan


def ort_run(proto: onnx.ModelProto, feeds: Feeds) -> list[np.ndarray]:
    """ONNX Runtime's reference Q/DQ semantics (graph optimizations off): its fused u8s8 kernels saturate
    with full 8-bit weights on CPUs without VNNI (AVX2), which TFLite's kernels do not."""
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(proto.SerializeToString(), options, providers=["CPUExecutionProvider"])
    return [np.asarray(v) for v in sess.run(None, feeds)]


_CHILD = """
import pickle, sys
import numpy as np
from ai_edge_litert.interpreter import Interpreter
blob, feeds = pickle.load(sys.stdin.buffer)
it = Interpreter(model_content=blob, num_threads=1)
it.allocate_tensors()
outs = []
for sample in feeds:
    for d, x in zip(it.get_input_details(), sample):
        it.set_tensor(d["index"], x)
    it.invoke()
    outs.append([it.get_tensor(d["index"]) for d in it.get_output_details()])
pickle.dump(outs, sys.stdout.buffer)
"""


def run_tflite_isolated(blob: bytes, feeds: list[list[np.ndarray]]) -> list[list[np.ndarray]]:
    """Run a .tflite in a child process; a crash becomes an AssertionError with its exit code."""
    proc = subprocess.run([sys.executable, "-c", _CHILD], input=pickle.dumps((blob, feeds)),
                          capture_output=True, timeout=300, check=False)
    assert proc.returncode == 0, json.dumps({"rc": proc.returncode, "stderr": proc.stderr.decode()[-2000:]})
    return pickle.loads(proc.stdout)


def parse(blob: bytes) -> dict[str, Any]:
    """Read a .tflite with the independent ``tflite`` package: ops, tensors, buffers, signatures."""
    import tflite

    assert tflite.Model.ModelBufferHasIdentifier(blob, 0), "file identifier is not TFL3"
    model = tflite.Model.GetRootAsModel(blob, 0)
    graph = model.Subgraphs(0)
    ops = []
    for i in range(graph.OperatorsLength()):
        op = graph.Operators(i)
        code = model.OperatorCodes(op.OpcodeIndex())
        ops.append((tflite.opcode2name(max(code.BuiltinCode(), code.DeprecatedBuiltinCode())), code.Version(),
                    [int(j) for j in op.InputsAsNumpy()], [int(j) for j in op.OutputsAsNumpy()]))
    tensors = []
    for i in range(graph.TensorsLength()):
        t = graph.Tensors(i)
        q = t.Quantization()
        scale = [] if q is None or q.ScaleIsNone() else q.ScaleAsNumpy().tolist()
        zero = [] if q is None or q.ZeroPointIsNone() else q.ZeroPointAsNumpy().tolist()
        tensors.append({"name": t.Name().decode(), "type": t.Type(), "shape": t.ShapeAsNumpy().tolist(),
                        "scale": scale, "zero_point": zero, "dim": q.QuantizedDimension() if q else 0,
                        "buffer": t.Buffer()})
    base = np.frombuffer(blob, np.uint8).__array_interface__["data"][0]
    offsets = []
    for i in range(model.BuffersLength()):
        data = model.Buffers(i).DataAsNumpy()
        if isinstance(data, np.ndarray) and data.size:
            offsets.append(data.__array_interface__["data"][0] - base)
    signatures = [model.SignatureDefs(i).SignatureKey().decode() for i in range(model.SignatureDefsLength())]
    return {"version": model.Version(), "ops": ops, "tensors": tensors, "buffer_offsets": offsets,
            "buffer0_empty": not isinstance(model.Buffers(0).DataAsNumpy(), np.ndarray),
            "signatures": signatures}
