"""``dsqc analyze``: one calibration, then per-node sensitivity written as a table, JSON and a plot."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from dsqc.autoprec.plan_space import build_space
from dsqc.autoprec.sensitivity import Sensitivity, analyze_space
from dsqc.autoprec.sensitivity_report import JSON_NAME, PLOT_NAME, write_json, write_plot
from dsqc.autoprec.switch_model import SwitchModel
from dsqc.backends.registry import get_backend
from dsqc.driver.build_data import RANDOM_WARNING, load_data, model_name
from dsqc.driver.build_types import BuildRequest
from dsqc.driver.output import staged_output
from dsqc.driver.pipeline import load_and_normalize
from dsqc.quant.recipe import load_recipe

log = logging.getLogger(__name__)


@dataclass
class AnalyzeRequest:
    model: Path
    out_dir: Path
    calib: str
    target: str = "onnx"
    metric: str = "sqnr"
    nodes: str | None = None
    samples: int = 8
    calib_samples: int = 256
    calib_batch: int = 8
    eval_data: str | None = None
    method: str | None = None
    recipe: Path | None = None
    progress: bool | None = None
    plot: bool = True
    backend_options: dict[str, object] = field(default_factory=dict)


@dataclass
class AnalyzeResult:
    sensitivity: Sensitivity
    artifacts: list[Path]
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def ratio(self) -> float:
        """Analysis wall time (calibration included, loading excluded) over the calibration's."""
        t = self.timings
        return (t["calibrate+plan"] + t["analyze"]) / max(t["calibration"], 1e-9)


def analyze(request: AnalyzeRequest) -> AnalyzeResult:
    """Calibrate once, measure every quantizable node's variants, write the outputs atomically."""
    timings: dict[str, float] = {}
    start = time.perf_counter()
    backend = get_backend(request.target)
    recipe = load_recipe(request.recipe)
    if request.method:
        recipe.method = request.method
    fp32 = load_and_normalize(request.model).model
    build_like = BuildRequest(model=request.model, target=request.target, out_dir=request.out_dir,
                              calib=request.calib, calib_samples=request.calib_samples,
                              eval_data=request.eval_data, eval_samples=request.samples)
    calib, held_out = load_data(build_like, fp32, recipe)
    if calib.synthetic:
        log.warning("%s", RANDOM_WARNING)
    timings["load"] = time.perf_counter() - start
    mark = time.perf_counter()
    profile = backend.profile_for(request.backend_options)
    space = build_space(fp32, profile, recipe, calib, request.calib_batch)
    timings["calibrate+plan"] = time.perf_counter() - mark
    timings["calibration"] = space.calibration_seconds
    mark = time.perf_counter()
    switch = SwitchModel(space)
    result = analyze_space(space, switch, held_out, request.metric, request.nodes, request.progress)
    timings["analyze"] = time.perf_counter() - mark
    extra: dict[str, Any] = {"model": str(request.model), "target": request.target,
                             "calibration": {"source": calib.source, "samples": len(calib),
                                             "method": recipe.method, "synthetic": calib.synthetic},
                             "held_out": held_out.source}
    with staged_output(request.out_dir) as staging:
        artifacts = [Path(JSON_NAME)]
        if request.plot:
            write_plot(staging / PLOT_NAME, result)
            artifacts.append(Path(PLOT_NAME))
        timings["total"] = time.perf_counter() - start
        result.timings.update(timings)
        write_json(staging / JSON_NAME, result, {**extra, "name": model_name(request.model)})
    log.info("analysis written to %s", request.out_dir)
    return AnalyzeResult(result, artifacts, timings)
