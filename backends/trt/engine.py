"""Build (and optionally time) a TensorRT engine from a strongly typed Q/DQ ONNX model.

Standalone on purpose: only the standard library and ``tensorrt`` (plus torch with CUDA for
``--time``). dsqc copies this file into every ``trt`` bundle as ``build_engine.py``, with
``BUNDLE`` filled in, and calls ``build_engine`` itself when TensorRT and a GPU are present.

    python build_engine.py                      # <name>.trt.onnx -> <name>.engine
    python build_engine.py --time 100           # and time it (median of 100 runs, needs torch+CUDA)
    python build_engine.py --shape input:4x3x224x224
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BUNDLE: dict[str, Any] = {}  # dsqc writes the bundle's file names and input shapes here

Shapes = dict[str, tuple[int, ...]]


@dataclass
class EngineResult:
    built: bool
    message: str
    path: Path | None = None
    seconds: float = 0.0


def tensorrt_status() -> tuple[bool, str]:
    """Whether an engine can be built here, and a one-line reason."""
    try:
        import tensorrt as trt
    except ImportError:
        return False, "the engine step needs TensorRT (the 'tensorrt' Python package does not import here)"
    try:
        trt.Builder(trt.Logger(trt.Logger.ERROR))
    except (TypeError, RuntimeError) as exc:
        return False, f"TensorRT {trt.__version__} imports but cannot create a builder (no GPU?): {exc}"
    return True, f"TensorRT {trt.__version__}"


def build_engine(onnx_path: Path, engine_path: Path, shapes: Shapes | None = None,
                 workspace_mib: int | None = None) -> EngineResult:
    """Parse ``onnx_path`` into a strongly typed network and serialize the engine to ``engine_path``."""
    ok, why = tensorrt_status()
    if not ok:
        return EngineResult(False, why)
    import tensorrt as trt

    start = time.perf_counter()
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    # 10.x: STRONGLY_TYPED is opt-in; 11.x: always on, the flag is kept but ignored.
    flag = getattr(trt.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    network = builder.create_network(0 if flag is None else 1 << int(flag))
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        return EngineResult(False, f"TensorRT's ONNX parser rejected {onnx_path}: {errors}")
    config = builder.create_builder_config()
    if workspace_mib:
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mib << 20)
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(d < 0 for d in network.get_input(i).shape)]
    if dynamic:
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            shape = (shapes or {}).get(tensor.name)
            if shape is None:
                return EngineResult(False, f"input '{tensor.name}' has dynamic shape {tuple(tensor.shape)}: "
                                    "pass --shape NAME:DxDx...")
            profile.set_shape(tensor.name, shape, shape, shape)
        config.add_optimization_profile(profile)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        return EngineResult(False, "TensorRT built no engine (see its log above)")
    engine_path.write_bytes(bytes(serialized))
    return EngineResult(True, f"wrote {engine_path} with TensorRT {trt.__version__}", engine_path,
                        time.perf_counter() - start)


def time_engine(engine_path: Path, shapes: Shapes | None = None, runs: int = 100, warmup: int = 10) -> float:
    """Median latency in ms of one inference (device buffers from torch; inputs left uninitialised)."""
    import numpy as np
    import tensorrt as trt
    import torch

    logger = trt.Logger(trt.Logger.WARNING)
    engine = trt.Runtime(logger).deserialize_cuda_engine(engine_path.read_bytes())
    context = engine.create_execution_context()
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    for name in names:
        if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT and name in (shapes or {}):
            context.set_input_shape(name, (shapes or {})[name])
    buffers = []
    for name in names:
        dtype = torch.from_numpy(np.empty(0, trt.nptype(engine.get_tensor_dtype(name)))).dtype
        buffer = torch.empty(tuple(context.get_tensor_shape(name)), dtype=dtype, device="cuda")
        context.set_tensor_address(name, buffer.data_ptr())
        buffers.append(buffer)
    stream = torch.cuda.Stream()
    times = []
    for i in range(warmup + runs):
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record(stream)
        context.execute_async_v3(stream.cuda_stream)
        end.record(stream)
        end.synchronize()
        if i >= warmup:
            times.append(begin.elapsed_time(end))
    return statistics.median(times)


def parse_shape(text: str) -> tuple[str, tuple[int, ...]]:
    """``name:1x3x224x224`` → ``("name", (1, 3, 224, 224))`` (the name may itself hold colons)."""
    name, sep, dims = text.rpartition(":")
    if not sep or not name or not all(d.isdigit() for d in dims.split("x")):
        raise argparse.ArgumentTypeError(f"--shape {text!r}: expected NAME:DxDx...")
    return name, tuple(int(d) for d in dims.split("x"))


def main(argv: list[str] | None = None) -> int:
    here = Path(__file__).resolve().parent
    parser = argparse.ArgumentParser(description="Build a TensorRT engine from this dsqc bundle.")
    parser.add_argument("--onnx", type=Path, default=here / BUNDLE.get("onnx", "model.trt.onnx"))
    parser.add_argument("--engine", type=Path, default=here / BUNDLE.get("engine", "model.engine"))
    parser.add_argument("--shape", type=parse_shape, action="append", default=[],
                        help="input shape NAME:DxDx... for dynamic inputs (repeatable)")
    parser.add_argument("--workspace-mib", type=int, default=None)
    parser.add_argument("--time", type=int, default=0, metavar="RUNS",
                        help="time the engine (needs torch with CUDA)")
    args = parser.parse_args(argv)
    shapes: Shapes = {k: tuple(v) for k, v in BUNDLE.get("shapes", {}).items()}
    shapes.update(dict(args.shape))
    ok, why = tensorrt_status()
    if not ok:
        print(f"error: {why}", file=sys.stderr)
        return 2
    result = build_engine(args.onnx, args.engine, shapes, args.workspace_mib)
    if not result.built:
        print(f"error: {result.message}", file=sys.stderr)
        return 1
    print(f"{result.message} in {result.seconds:.1f} s")
    if args.time:
        try:
            print(f"median latency: {time_engine(args.engine, shapes, args.time):.3f} ms ({args.time} runs)")
        except ImportError:
            print("timing needs torch with CUDA; or run: trtexec --loadEngine=" + str(args.engine))
    return 0


if __name__ == "__main__":
    sys.exit(main())
