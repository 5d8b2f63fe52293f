"""A model where plain INT8 loses > 1 pt: the demo MNIST CNN with an outlier-heavy last layer planted.

    python -m tools.mixed_precision.planted_mnist [--outlier 48]

The planting keeps the FP32 function exactly: one hidden unit is added to the first Gemm with zero
weights and bias −1 (its ReLU output is always 0), and the last Gemm reads it through a column of
weights ``outlier`` times each row's largest. Nothing changes in FP32, but every output row's int8
grid now spans the outlier, so the real weights get a few levels each — the pattern of outlier
columns in large models. Plain INT8 and ``--accuracy-budget drop:0.005`` are built on the 4,000-digit
train split (256 for calibration) and verified on the 1,000 held-out test digits.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from dsqc.driver.build_types import BuildRequest
from dsqc.driver.pipeline import build
from dsqc.models.mnist import DEMO_MODEL_PATH


def plant(src: Path, dst: Path, outlier: float) -> Path:
    model = onnx.load(src)
    inits = {t.name: t for t in model.graph.initializer}
    fc1, fc2 = [n for n in model.graph.node if n.op_type == "Gemm"]
    w1, b1, w2 = (numpy_helper.to_array(inits[name]) for name in (fc1.input[1], fc1.input[2], fc2.input[1]))
    column = outlier * np.abs(w2).max(axis=1, keepdims=True)
    new = {fc1.input[1]: np.concatenate([w1, np.zeros((1, w1.shape[1]), np.float32)]),
           fc1.input[2]: np.append(b1, np.float32(-1.0)),
           fc2.input[1]: np.concatenate([w2, column], axis=1)}
    for name, value in new.items():
        inits[name].CopyFrom(numpy_helper.from_array(value.astype(np.float32), name))
    del model.graph.value_info[:]  # the hidden layer is one unit wider now
    onnx.checker.check_model(model)
    onnx.save(model, dst)
    return dst


def run(workdir: Path, outlier: float, budget: str) -> dict[str, Any]:
    workdir.mkdir(parents=True, exist_ok=True)
    model = plant(DEMO_MODEL_PATH, workdir / "mnist_planted.onnx", outlier)
    results: dict[str, Any] = {"outlier": outlier, "budget": budget}
    for name, extra in (("int8", {}), ("mixed", {"accuracy_budget": budget})):
        start = time.perf_counter()
        res = build(BuildRequest(model=model, target="onnx", out_dir=workdir / name, calib="mnist",
                                 calib_samples=256, eval_samples=1000, measure_latency=False, **extra))
        ver = res.metrics["verification"]
        row: dict[str, Any] = {"build_s": time.perf_counter() - start, "task": ver["task"],
                               "min_sqnr_db": ver["min_sqnr_db"], "failed": res.failed}
        if "mixed_precision" in res.metrics:
            mp = res.metrics["mixed_precision"]
            row["mixed_precision"] = {k: mp[k] for k in ("met", "accuracy", "histogram", "above_int8",
                                                        "quantizable_nodes", "graph_nodes")}
            row["mixed_precision"]["above"] = {n: d for n, d in mp["nodes"].items()
                                               if d["precision"] not in ("int8", "int4")}
        results[name] = row
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, default=Path(".cache/mixed_precision/mnist"))
    parser.add_argument("--outlier", type=float, default=48.0)
    parser.add_argument("--budget", default="drop:0.005")
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("planted_mnist_results.json"))
    args = parser.parse_args()
    results = run(args.workdir, args.outlier, args.budget)
    args.out.write_text(json.dumps(results, indent=2, default=str) + "\n")
    print(json.dumps(results, indent=2, default=str))


if __name__ == "__main__":
    main()
