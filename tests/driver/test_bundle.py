"""Every build folder is a bundle: manifest fields, ``dsqc verify`` (hashes and re-run), escaping in
report.html, byte-identical rebuilds, whole-folder replacement and refusal of foreign folders."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest

from dsqc.driver.cli import main
from dsqc.driver.manifest import body_sha256, canonical
from tests.conftest import conv_bn_model

EVIL = "<img src=x onerror=alert(1)>"


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture
def evil_model(tmp_path: Path) -> Path:
    """conv_bn with its Conv node named like an HTML injection (and a quote in the Gemm's name)."""
    model = conv_bn_model()
    for node in model.graph.node:
        if node.op_type == "Conv":
            node.name = EVIL
        if node.op_type == "Gemm":
            node.name = 'fc"><script>alert(2)</script>'
    path = tmp_path / "evil.onnx"
    onnx.save(model, path)
    return path


def _build(model: Path, data: Path, out: Path, target: str, *extra: str) -> int:
    return main(["-q", "build", str(model), "--target", target, "--calib", str(data), "-o", str(out),
                 "--no-latency", *extra])


def _files(folder: Path) -> dict[str, bytes]:
    return {p.relative_to(folder).as_posix(): p.read_bytes()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def test_manifest_records_inputs_versions_and_every_file(tmp_path: Path, conv_bn_path: Path,
                                                         conv_bn_npz: Path) -> None:
    recipe = tmp_path / "recipe.toml"
    recipe.write_text('[quantization]\nmethod = "percentile"\n')
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out, "onnx", "--recipe", str(recipe)) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "dsqc-bundle/1" and manifest["target"] == "onnx"
    assert manifest["model"] == {"path": str(conv_bn_path), "sha256": _sha(conv_bn_path)}
    assert manifest["command"][:3] == ["dsqc", "-q", "build"] and str(out) in manifest["command"]
    assert {"dsqc", "onnx", "onnxruntime", "ai-edge-litert"} <= set(manifest["versions"])
    assert manifest["versions"]["onnxruntime"] is not None
    assert manifest["recipe"]["text"] == recipe.read_text() and manifest["recipe"]["sha256"] == _sha(recipe)
    calib = manifest["calibration"]
    assert calib["source"] == str(conv_bn_npz) and calib["source_sha256"] == _sha(conv_bn_npz)
    assert calib["method"] == "percentile" and len(calib["samples_sha256"]) == 64 and calib["samples"] > 0
    assert manifest["plan"]["tensors"] and manifest["metrics"]["verification"]["outputs"]
    assert "passes_ms" not in manifest["metrics"]  # wall times live in build_info.json
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()}
    assert set(manifest["files"]) == on_disk - {"manifest.json", "build_info.json"}
    assert {"conv_bn.int8.onnx", "report.json", "report.html", "check/input_0.npy"} <= set(manifest["files"])
    for rel, entry in manifest["files"].items():
        assert entry["sha256"] == _sha(out / rel), rel
    assert manifest["manifest_sha256"] == body_sha256(manifest)
    info = json.loads((out / "build_info.json").read_text())
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", info["built_at"])
    assert info["manifest_sha256"] == manifest["manifest_sha256"] and "built_at" not in manifest
    assert "timings_s" not in json.loads((out / "report.json").read_text())


def test_verify_passes_then_names_the_tampered_file(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path,
                                                    capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out, "onnx") == 0
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    text = capsys.readouterr().out
    assert "all files match" in text and "bit-exact" in text
    assert "re-run conv_bn.int8.onnx in ONNX Runtime" in text
    (out / "debug.json").write_text("{}")  # `dsqc debug OUT` writes there by default: not a tamper
    assert main(["verify", str(out)]) == 0
    assert "debug.json: written by a later dsqc command" in capsys.readouterr().out
    artifact = out / "conv_bn.int8.onnx"
    blob = bytearray(artifact.read_bytes())
    blob[-1] ^= 1
    artifact.write_bytes(bytes(blob))
    assert main(["verify", str(out)]) == 1
    assert "MISMATCH conv_bn.int8.onnx: sha256 mismatch" in capsys.readouterr().out
    artifact.unlink()
    (out / "extra.txt").write_text("x")
    assert main(["verify", str(out)]) == 1
    text = capsys.readouterr().out
    assert "conv_bn.int8.onnx: missing" in text and "extra.txt: not in the manifest" in text


def test_verify_reruns_the_artifact_and_catches_a_disagreement(tmp_path: Path, conv_bn_path: Path,
                                                               conv_bn_npz: Path,
                                                               capsys: pytest.CaptureFixture[str]) -> None:
    """Recorded outputs changed *and* re-hashed: only the re-run in ORT can notice."""
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out, "onnx") == 0
    recorded = out / "check" / "output_0.npy"
    values = np.load(recorded)
    np.save(recorded, values + np.float32(np.ptp(values)), allow_pickle=False)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["check/output_0.npy"]["sha256"] = _sha(recorded)
    manifest["manifest_sha256"] = body_sha256(manifest)
    (out / "manifest.json").write_text(canonical(manifest))
    capsys.readouterr()
    assert main(["verify", str(out)]) == 1
    assert "MISMATCH — output 'logits' differs" in capsys.readouterr().out


def test_verify_refuses_a_folder_that_is_not_a_bundle(tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    (tmp_path / "notes.txt").write_text("hello")
    assert main(["verify", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsqc: error: ") and "no manifest.json" in err and "\n" not in err
    assert main(["verify", str(tmp_path / "absent")]) == 2
    (tmp_path / "manifest.json").write_text("{}")
    assert main(["verify", str(tmp_path)]) == 2


def test_model_strings_are_escaped_in_report_html(tmp_path: Path, evil_model: Path,
                                                  conv_bn_npz: Path) -> None:
    out = tmp_path / "out"
    assert _build(evil_model, conv_bn_npz, out, "onnx") == 0
    html = (out / "report.html").read_text()
    assert EVIL not in html and "<script" not in html and "<img" not in html
    assert "&lt;img src=x onerror=alert(1)&gt;" in html
    assert "fc&quot;&gt;&lt;script&gt;alert(2)&lt;/script&gt;" in html
    # self-contained: no script, no stylesheet or image fetched, no remote address but the SVG namespace
    tags = re.findall(r"<[A-Za-z][^>]*>", html)
    assert not [t for t in tags if re.match(r"<(script|link|img|iframe|object)", t) or " src=" in t]
    assert not [t for t in tags if re.search(r'href="(?!#)', t)] and "url(" not in html
    remote = set(re.findall(r"https?://[^\s\"'<)]+", html))
    assert remote <= {"http://www.w3.org/2000/svg"}, remote
    for section in ("summary", "accuracy", "precision", "histograms", "params", "run", "files"):
        assert f'id="{section}"' in html
    assert "<svg" in html and "clip [" in html  # histograms with the clipping range


@pytest.mark.parametrize("target", ["onnx", "tflite", "hls"])
def test_rebuild_is_byte_identical(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path,
                                   target: str) -> None:
    """Same inputs, --no-latency: every file but build_info.json is byte-identical (and the rebuild
    replaces the first bundle in the same -o)."""
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out, target) == 0
    first = _files(out)
    assert _build(conv_bn_path, conv_bn_npz, out, target) == 0
    second = _files(out)
    assert first.pop("build_info.json") != second.pop("build_info.json") or True  # the time may match
    assert set(first) == set(second)
    changed = [name for name in first if first[name] != second[name]]
    assert not changed, changed


def test_reused_bundle_folder_is_replaced_whole(tmp_path: Path, conv_bn_path: Path,
                                                conv_bn_npz: Path) -> None:
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out, "onnx") == 0
    (out / "stale.bin").write_bytes(b"old")
    assert _build(conv_bn_path, conv_bn_npz, out, "tflite") == 0
    names = {p.name for p in out.iterdir()}
    assert "conv_bn.int8.tflite" in names and "conv_bn.int8.onnx" not in names and "stale.bin" not in names
    assert main(["verify", str(out)]) == 0
    assert not list(tmp_path.glob(".out.*")), "staging or old bundle left behind"


def test_failed_rebuild_leaves_the_old_bundle_as_it_was(tmp_path: Path, conv_bn_path: Path,
                                                       conv_bn_npz: Path) -> None:
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out, "onnx") == 0
    before = _files(out)
    assert _build(conv_bn_path, conv_bn_npz, out, "tflite", "--min-sqnr", "500") == 2
    assert _files(out) == before
    assert main(["verify", str(out)]) == 0
    assert not list(tmp_path.glob(".out.*"))


def test_non_bundle_folder_is_refused_before_any_work(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "photos"
    out.mkdir()
    (out / "holiday.jpg").write_bytes(b"\xff\xd8")
    assert _build(conv_bn_path, conv_bn_npz, out, "onnx") == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "photos' is not empty and is not a dsqc bundle" in err
    assert [p.name for p in out.iterdir()] == ["holiday.jpg"]
    assert not list(tmp_path.glob(".photos.*"))
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _build(conv_bn_path, conv_bn_npz, empty, "onnx") == 0


def test_hls_bundle_verifies_with_its_testbench(tmp_path: Path, conv_bn_path: Path, conv_bn_npz: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    if shutil.which("gcc") is None or shutil.which("make") is None:
        pytest.fail("gcc and make are part of this project's toolchain (the hls target needs them)")
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out, "hls") == 0
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert re.search(r"make csim: ok — \d+ vectors, 0 mismatching values", capsys.readouterr().out)
    html = (out / "report.html").read_text()
    assert "make csim" in html and "vitis_hls -f build.tcl" in html and "Q31 multiplier" in html
    # a changed bias, re-hashed into the manifest: only the compiled testbench can notice
    weights = out / "hls" / "firmware" / "weights_0.c"
    text = weights.read_text()
    start = text.index("_b[")
    first = re.compile(r"-?\d+").search(text, text.index("{", start))
    assert first is not None
    weights.write_text(text[:first.start()] + str(int(first.group()) + 1_000_000) + text[first.end():])
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["files"]["hls/firmware/weights_0.c"]["sha256"] = _sha(weights)
    manifest["manifest_sha256"] = body_sha256(manifest)
    (out / "manifest.json").write_text(canonical(manifest))
    assert main(["verify", str(out)]) == 1
    assert "make csim: MISMATCH" in capsys.readouterr().out


def test_multi_target_folder_has_one_page_and_verifies_per_target(tmp_path: Path, conv_bn_path: Path,
                                                                  conv_bn_npz: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert _build(conv_bn_path, conv_bn_npz, out, "onnx,tflite") == 0
    html = (out / "report.html").read_text()
    assert 'id="agreement"' in html and "onnx vs tflite" in html and "<h3>tflite</h3>" in html
    assert "tflite/conv_bn.int8.tflite" in html  # every target bundle's files, with their hashes
    capsys.readouterr()
    assert main(["verify", str(out)]) == 0
    assert capsys.readouterr().out.count("dsqc: bundle OK") == 2
    tflite = out / "tflite" / "conv_bn.int8.tflite"
    tflite.write_bytes(tflite.read_bytes() + b"\0")
    assert main(["verify", str(out)]) == 1
    assert "MISMATCH conv_bn.int8.tflite: sha256 mismatch" in capsys.readouterr().out
