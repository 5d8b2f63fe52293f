"""Packaging: one `dsqc` namespace, a wheel that installs and runs, a light `--help`."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import sys
import time
import venv
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
HEAVY = ("torch", "tensorrt", "ai_edge_litert", "tflite", "transformers")


def test_help_is_light_and_fast() -> None:
    code = ("import sys, time; t = time.perf_counter(); from dsqc.driver.cli import main\n"
            "try:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
            f"bad = [m for m in {HEAVY!r} if m in sys.modules]\n"
            "print('HEAVY', bad); print('SECONDS', time.perf_counter() - t)")
    start = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    wall = time.perf_counter() - start
    assert "HEAVY []" in proc.stdout, proc.stdout
    assert "build" in proc.stdout and "inspect" in proc.stdout
    assert wall < 5.0  # generous for loaded CI machines; typically ~0.1 s


def test_compiler_and_passes_never_import_a_backend() -> None:
    targets = ("dsqc.backends.onnx", "dsqc.backends.trt", "dsqc.backends.tflite", "dsqc.backends.hls")
    offenders = []
    for folder in ("compiler", "passes"):
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = []
                if isinstance(node, ast.Import):
                    names = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom) and node.module:
                    names = [node.module]
                offenders += [f"{path.relative_to(ROOT)}: {n}" for n in names
                              if n.startswith(targets) or n.split(".")[0] in HEAVY]
    allowed = {"compiler/torch_export.py: torch",  # both import torch inside the functions that use it
               "passes/adaround.py: torch", "passes/adaround.py: torch.nn.functional"}
    offenders = [o for o in offenders if not o.startswith("compiler/qat/")]  # dsqc.qat is the torch API
    assert set(offenders) <= allowed, offenders


def test_no_bare_top_level_names_installed() -> None:
    import dsqc
    import dsqc.backends
    import dsqc.models
    import dsqc.passes

    assert Path(dsqc.__file__).parent.name == "compiler"
    for bare in ("compiler", "passes", "models", "backends"):
        assert bare not in sys.modules or not hasattr(sys.modules[bare], "__path__") or \
            Path(sys.modules[bare].__path__[0]).parent != ROOT


@pytest.mark.skipif(os.environ.get("DSQC_SKIP_WHEEL") == "1", reason="DSQC_SKIP_WHEEL=1")
def test_wheel_installs_non_editable_and_runs(tmp_path: Path) -> None:
    # setuptools builds in the source folder (build/lib, *.egg-info) and never empties build/lib, so a
    # wheel built from the checkout leaves a stale copy there and ships modules deleted since: build
    # from a clean copy of what the wheel is made of.
    source = tmp_path / "source"
    for folder in _package_folders():
        shutil.copytree(ROOT / folder, source / folder, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, source / name)
    dist = tmp_path / "dist"
    built = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation",
                            "-w", str(dist), str(source)], check=True, timeout=300, capture_output=True,
                           text=True)
    # e.g. setuptools' "`project.license` as a TOML table is deprecated" (a SPDX string since 77)
    assert "deprecated" not in built.stdout + built.stderr, built.stderr
    wheel = next(dist.glob("dsqc-*.whl"))
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.endswith(".py")}
    assert shipped == {name.replace(".", "/") + ("/__init__.py" if path.name == "__init__.py" else ".py")
                       for name, path in _dsqc_modules().items()}
    env_dir = tmp_path / "venv"
    venv.create(env_dir, with_pip=True)
    py = env_dir / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", str(wheel)], check=True, timeout=600)
    version = subprocess.run([str(env_dir / "bin" / "dsqc"), "--version"], capture_output=True,
                             text=True, check=True, cwd=tmp_path)
    assert version.stdout.strip().startswith("dsqc ")
    where = subprocess.run([str(py), "-c", "import dsqc, dsqc.passes, dsqc.models as m; "
                            "print(dsqc.__file__); print(m.__file__)"],
                           capture_output=True, text=True, check=True, cwd=tmp_path)
    assert all(str(env_dir) in line for line in where.stdout.split()), where.stdout
    model = Path(where.stdout.split()[1]).with_name("mnist_cnn.onnx")
    assert model.is_file(), "the demo model must ship inside the wheel"
    out = tmp_path / "out"
    subprocess.run([str(env_dir / "bin" / "dsqc"), "build", str(model), "--target", "onnx",
                    "--precision", "fp32", "-o", str(out)], check=True, cwd=tmp_path, timeout=300)
    assert (out / "mnist_cnn.fp32.onnx").is_file()


def _package_folders() -> list[str]:
    import tomllib

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    return sorted(set(mapping.values()))


def _dsqc_modules() -> dict[str, Path]:
    """Every module of the distribution by its installed name (``dsqc.quant.planner``), from the
    package-dir mapping in pyproject.toml."""
    import tomllib

    mapping = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["package-dir"]
    modules = {}
    for ns, folder in mapping.items():
        for path in (ROOT / folder).rglob("*.py"):
            parts = path.relative_to(ROOT / folder).with_suffix("").parts
            modules[".".join((ns, *(parts[:-1] if parts[-1] == "__init__" else parts)))] = path
    return modules


def import_graph() -> dict[str, set[str]]:
    """Module → the dsqc modules it imports, wherever the import stands (module level, under
    ``TYPE_CHECKING`` or inside a function: an import deferred to dodge a cycle is still a cycle).
    ``from pkg import name`` counts as importing ``pkg.name`` when that is a module, else ``pkg``;
    running a package's ``__init__`` on the way to a submodule is not counted."""
    modules = _dsqc_modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = package
                for _ in range(node.level - 1):
                    base = base.rpartition(".")[0]
                base = (f"{base}.{node.module}" if node.module else base) if node.level else str(node.module)
                targets = [f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base for a in node.names]
            else:
                continue
            graph[name] |= {t for t in targets if t in modules and t != name}
    return graph


def test_dsqc_modules_import_each_other_without_cycles() -> None:
    import networkx as nx

    imports = import_graph()
    # the graph sees imports under TYPE_CHECKING and inside functions, and resolves relative ones
    assert "dsqc.backends.tflite.lowerer" in imports["dsqc.backends.tflite.rules_conv"]
    assert "dsqc.models.mnist" in imports["dsqc.calibration.sources"]
    assert "dsqc.integer.reference" in imports["dsqc.integer.compare"]
    graph = nx.DiGraph([(a, b) for a, targets in imports.items() for b in targets])
    cycles = [sorted(scc) for scc in nx.strongly_connected_components(graph) if len(scc) > 1]
    assert not cycles, f"import cycles: {cycles}"


def test_every_code_folder_is_packaged() -> None:
    import tomllib

    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    listed = set(config["packages"])
    for ns, folder in config["package-dir"].items():
        for init in (ROOT / folder).rglob("__init__.py"):
            rel = init.parent.relative_to(ROOT / folder)
            name = ns + "".join(f".{part}" for part in rel.parts)
            assert name in listed, f"{name} ({init.parent}) is missing from pyproject packages"
