"""``dsqc analyze`` wall time over its own calibration's, on resnet18_like (49 nodes after normalization).

    python -m tools.mixed_precision.analyze_ratio [--repeats 3]

Calibration: 256 seeded N(0, 1) inputs (the ``dsqc build`` default count), mse ranges; variants run
on 8 held-out inputs. Reported per run: calibration seconds, ``core`` = calibration + planning +
all one-node variants, ``with outputs`` = core + writing sensitivity.json and the matplotlib plot.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from dsqc.autoprec.analyze import AnalyzeRequest, analyze
from dsqc.models.export import zoo_model


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="resnet18_like")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--samples", type=int, default=8)
    parser.add_argument("--out", type=Path, default=Path(__file__).with_name("analyze_ratio_results.json"))
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        model = zoo_model(args.model, folder)
        data = folder / "data.npz"
        inputs = np.random.default_rng(1).standard_normal((256 + 64, 3, 64, 64)).astype(np.float32)
        np.savez(data, input=inputs)
        rows: list[dict[str, Any]] = []
        for _ in range(args.repeats):
            start = time.perf_counter()
            result = analyze(AnalyzeRequest(model=model, out_dir=folder / "out", calib=str(data),
                                            samples=args.samples, progress=False))
            t = result.timings
            core = t["calibrate+plan"] + t["analyze"]
            rows.append({"calibration_s": t["calibration"], "core_s": core, "core_ratio": result.ratio,
                         "with_outputs_s": t["total"] - t["load"],
                         "with_outputs_ratio": (t["total"] - t["load"]) / t["calibration"],
                         "wall_s": time.perf_counter() - start, "runs": result.sensitivity.timings["runs"],
                         "nodes": len(result.sensitivity.nodes)})
    summary = {"model": args.model, "samples": args.samples, "runs": rows,
               "median_core_ratio": statistics.median(r["core_ratio"] for r in rows),
               "median_with_outputs_ratio": statistics.median(r["with_outputs_ratio"] for r in rows)}
    args.out.write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


if __name__ == "__main__":
    main()
