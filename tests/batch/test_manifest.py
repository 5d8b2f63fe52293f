"""The fleet manifest: expansion of models × calibration sets × targets × recipes, and one-line errors
naming the key (exit 2 through the CLI)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dsqc.batch.manifest import ManifestError, load_fleet
from dsqc.driver.cli import main


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for name in ("a.onnx", "b.onnx"):
        (tmp_path / "models" / name).parent.mkdir(exist_ok=True)
        (tmp_path / "models" / name).write_bytes(b"not parsed by the manifest")
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "w8.toml").write_text("")
    (tmp_path / "recipes" / "mse.toml").write_text("")
    np.savez(tmp_path / "cal.npz", input=np.zeros((2, 3), np.float32))
    return tmp_path


def _write(folder: Path, text: str) -> Path:
    path = folder / "fleet.toml"
    path.write_text(text)
    return path


def test_globs_and_lists_expand_into_items_with_folders(tree: Path) -> None:
    fleet = load_fleet(_write(tree, """
        targets = ["onnx", "tflite"]
        recipes = ["none", "recipes/*.toml"]
        [limits]
        memory_mb = 1000
        [build]
        eval_samples = 8
        latency = false
        options = { isa = "vnni" }
        [[models]]
        path = "models/*.onnx"
        [[models]]
        path = "models/a.onnx"
        name = "a_cal"
        calib = ["random", "cal.npz"]
        targets = ["hls"]
        recipes = "none"
        timeout_s = 30
        build = { eval_samples = 4, options = { parallelism = 4 }, outputs = "head,boxes" }
    """))
    ids = [item.id for item in fleet.items]
    assert ids[:6] == ["a/onnx-none", "a/onnx-mse", "a/onnx-w8",
                       "a/tflite-none", "a/tflite-mse", "a/tflite-w8"]
    assert len(ids) == 12 + 2 and ids[-2:] == ["a_cal/hls-random", "a_cal/hls-cal"]
    assert fleet.out == tree / "fleet.out"
    last = fleet.items[-1]
    assert last.limits.timeout_s == 30 and last.limits.memory_mb == 1000
    assert last.calib.spec == str(tree / "cal.npz")
    argv = last.argv(Path("o"))
    assert argv[:8] == ["build", str(tree / "models/a.onnx"), "--target", "hls", "-o", "o", "--calib",
                        str(tree / "cal.npz")]
    assert "--no-latency" in argv and argv[argv.index("--eval-samples") + 1] == "4"
    assert argv[argv.index("--outputs") + 1] == "head,boxes"
    assert "--outputs" not in fleet.items[0].argv(Path("o"))
    options = [argv[i + 1] for i, a in enumerate(argv) if a == "-B"]
    assert options == ["isa=vnni", "parallelism=4"]  # the model's options merge with [build]'s


@pytest.mark.parametrize(("text", "message"), [
    ("targets = ['onnx']\n[[models]]\npath = 'models/a.onnx'\ntargts = ['x']",
     "models[0].targts: unknown key"),
    ("targets = ['onnx', 'tpu']\n[[models]]\npath = 'models/a.onnx'", "targets: unknown target 'tpu'"),
    ("targets = ['onnx']\n[[models]]\npath = 'models/*.tflite'",
     "models[0].path: 'models/*.tflite' matches no"),
    ("targets = ['onnx']\n[[models]]\npath = 'models/zz.onnx'",
     "models[0].path: 'models/zz.onnx': no such file"),
    ("targets = ['onnx']\n[limits]\nmemory_mb = '4G'\n[[models]]\npath = 'models/a.onnx'",
     "limits.memory_mb: expected a positive integer, got '4G'"),
    ("targets = ['onnx']\n[build]\neval_samples = 'x'\n[[models]]\npath = 'models/a.onnx'",
     "build.eval_samples: expected int"),
    ("targets = ['onnx']\n[[models]]\npath = 'models/*.onnx'\nname = 'x'", "models[0].name: only for a path"),
    ("[[models]]\npath = 'models/a.onnx'", "models[0].targets: missing"),
    ("targets = ['onnx']", "models: give at least one [[models]]"),
    ("targets = ['onnx'\n", "not valid TOML"),
    ("targets = ['onnx']\n[[models]]\npath = 'models/a.onnx'\n[[models]]\npath = 'models/*.onnx'",
     "both make item 'a/onnx'"),
])
def test_bad_manifest_is_one_line_naming_the_key(tree: Path, text: str, message: str) -> None:
    with pytest.raises(ManifestError, match=None) as info:
        load_fleet(_write(tree, text))
    assert message in str(info.value) and "\n" not in str(info.value)
    assert str(info.value).startswith(str(tree / "fleet.toml"))


def test_cli_bad_manifest_exits_2_with_one_line(tree: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = _write(tree, "targets = ['onnx']\n[[models]]\npath = 'models/a.onnx'\nmemory = 3")
    assert main(["batch", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("dsqc: error: ") and "models[0].memory: unknown key" in err and "\n" not in err
    assert not (tree / "fleet.out").exists()  # nothing written


def test_readme_example_is_a_valid_manifest(tree: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The README's fleet example parses as documented (and a relative -o becomes absolute)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    example = readme.split("### Fleets", 1)[1].split("```toml\n", 1)[1].split("```", 1)[0]
    fleet = load_fleet(_write(tree, example), Path("rel"))
    monkeypatch.chdir(tree)
    assert fleet.out.is_absolute()
    assert {i.folder for i in fleet.items if i.model_name == "a"} == {
        f"{t}-{r}" for t in ("onnx", "trt", "hls") for r in ("none", "mse", "w8")}
    assert all(i.limits.memory_mb == 8000 and i.build["options"] == {"isa": "vnni"} for i in fleet.items)
