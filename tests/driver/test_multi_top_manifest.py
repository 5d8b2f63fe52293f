"""A multi-target folder's top level (params.csv, agreement.json, targets.json, report.html) is covered by
``top_manifest.json``, which ``dsqc verify OUT`` checks; wall seconds live in the top-level
``build_info.json``, so two ``--no-latency`` builds are byte-identical but for the build_info.json files."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from dsqc.driver.cli import main


def _build(model: Path, data: Path, out: Path) -> int:
    return main(["-q", "build", str(model), "--target", "onnx,tflite,hls", "--calib", str(data),
                 "-o", str(out), "--no-latency"])


def _files(folder: Path) -> dict[str, bytes]:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in files}


def test_two_multi_target_builds_differ_only_in_the_timing_files(tmp_path: Path, conv_bn_path: Path,
                                                                 conv_bn_npz: Path) -> None:
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out) == 0
    first = _files(out)
    assert _build(conv_bn_path, conv_bn_npz, out) == 0
    second = _files(out)
    assert set(first) == set(second)
    timing = {name for name in first if name.rsplit("/", 1)[-1] == "build_info.json"}
    assert timing == {"build_info.json", *(f"{t}/build_info.json" for t in ("onnx", "tflite", "hls"))}
    changed = [name for name in first if name not in timing and first[name] != second[name]]
    assert not changed, changed
    index = json.loads(second["targets.json"])
    assert all("seconds" not in entry for entry in index["targets"].values())
    info = json.loads(second["build_info.json"])
    assert set(info["seconds"]) == {"onnx", "tflite", "hls", "total"}
    top = json.loads(second["top_manifest.json"])
    assert set(top["files"]) == {"params.csv", "agreement.json", "targets.json", "report.html"}


@pytest.mark.parametrize("name", ["params.csv", "agreement.json", "targets.json", "report.html"])
def test_verify_names_a_changed_top_level_file(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path,
                                               capsys: pytest.CaptureFixture[str], name: str) -> None:
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out) == 0
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert "all top-level files match top_manifest.json" in capsys.readouterr().out
    path = out / name
    path.write_bytes(path.read_bytes().replace(b"onnx", b"onnX", 1))
    assert main(["verify", str(out)]) == 1
    assert f"MISMATCH {name}: sha256 mismatch" in capsys.readouterr().out


def test_verify_names_an_added_or_removed_top_file(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out) == 0
    (out / "notes.txt").write_text("x")
    (out / "params.csv").unlink()
    (out / "build_info.json").write_text("{}")  # the timing file: not hashed
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "MISMATCH notes.txt: not in the manifest" in text and "MISMATCH params.csv: missing" in text
    assert "build_info.json" not in text.split("dsqc verify", 2)[1]
