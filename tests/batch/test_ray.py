"""The same fleet on Ray tasks (a local Ray started here) and on local workers gives identical model files."""

from __future__ import annotations

from pathlib import Path

import onnx
import ray

from dsqc.batch.manifest import load_fleet
from dsqc.batch.runner import LocalExecutor, RayExecutor, run_batch
from dsqc.batch.summary import model_artifact_hashes
from tests.conftest import conv_bn_model


def test_ray_and_local_runs_write_identical_artifacts(tmp_path: Path) -> None:
    onnx.save(conv_bn_model(), str(tmp_path / "net.onnx"))
    manifest = tmp_path / "fleet.toml"
    manifest.write_text("targets = ['onnx', 'tflite']\n[limits]\nmemory_mb = 1500\n"
                        "[build]\ncalib_samples = 16\neval_samples = 4\nlatency = false\n"
                        "[[models]]\npath = 'net.onnx'\n")
    local = run_batch(load_fleet(manifest, tmp_path / "local"), LocalExecutor(jobs=2))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        on_ray = run_batch(load_fleet(manifest, tmp_path / "ray"), RayExecutor("auto"))
    finally:
        ray.shutdown()
    assert [r["status"] for r in local.records] == [r["status"] for r in on_ray.records] == ["ok", "ok"]
    for a, b in zip(local.records, on_ray.records, strict=True):
        models = model_artifact_hashes(a["artifacts"])
        assert models and models == model_artifact_hashes(b["artifacts"]), a["id"]
    assert (tmp_path / "ray" / "net" / "tflite" / "net.int8.tflite").is_file()
