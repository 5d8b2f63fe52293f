"""Where prepared models live and how a prepared case is written: ``NAME.onnx``, ``NAME.calib.npz``,
``NAME.eval.npz`` (input name → ``[N, ...]``) and ``NAME.json`` (task kind, what the inputs are)."""

from __future__ import annotations

import json
import logging
import os
import platform
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger(__name__)

REPO = Path(__file__).resolve().parents[3]
SHARED_DIR_ENV = "DSQC_REAL_SHARED"  # also copy every prepared case there (for people measuring a fix)
KINDS = ("classifier", "detector", "vad", "embedding", "mnist")


def real_dir() -> Path:
    """The cache of prepared cases: ``$DSQC_REAL_DIR`` or ``<repo>/.cache/real``."""
    return Path(os.environ.get("DSQC_REAL_DIR") or REPO / ".cache" / "real")


def is_prepared(tool: str, case: str, data: Path) -> bool:
    """Whether ``case`` is prepared in ``data``; if not, says on stderr how to prepare it."""
    if (data / f"{case}.onnx").is_file():
        return True
    print(f"{tool}: {case} is not prepared in {data}; run `python -m tools.bench.real.prepare --only {case}` "
          "(the torchvision venv for torchvision cases) first", file=sys.stderr)
    return False


def tree_and_machine() -> tuple[str, str]:
    """The checkout's short commit and the machine, as the results tables name them."""
    tree = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          cwd=REPO).stdout.strip()
    return tree, f"{platform.processor() or platform.machine()}, {platform.python_version()}"


def save_case(
    name: str,
    model: Path,
    calib: dict[str, np.ndarray],
    held: dict[str, np.ndarray],
    meta: dict[str, Any],
    folder: Path | None = None,
) -> Path:
    """Write one prepared case into ``folder`` (default :func:`real_dir`); returns its json path.

    ``meta`` must hold ``kind`` (one of :data:`KINDS`) and ``inputs`` (what the arrays mean); the
    sample counts and input shapes are added here. A ``labels`` array may ride in ``held``."""
    if meta.get("kind") not in KINDS:
        raise ValueError(f"{name}: kind must be one of {KINDS}, got {meta.get('kind')!r}")
    folder = folder or real_dir()
    folder.mkdir(parents=True, exist_ok=True)
    onnx_path = folder / f"{name}.onnx"
    if model.resolve() != onnx_path.resolve():
        shutil.copyfile(model, onnx_path)
    np.savez(folder / f"{name}.calib.npz", **calib)  # type: ignore[arg-type]
    np.savez(folder / f"{name}.eval.npz", **held)  # type: ignore[arg-type]
    first = next(iter(calib))
    meta = {
        **meta,
        "name": name,
        "model": onnx_path.name,
        "calib": f"{name}.calib.npz",
        "eval": f"{name}.eval.npz",
        "n_calib": len(calib[first]),
        "n_eval": len(held[first]),
        "shapes": {k: [int(d) for d in v.shape] for k, v in calib.items()},
        "dtypes": {k: str(v.dtype) for k, v in calib.items()},
    }
    meta_path = folder / f"{name}.json"
    meta_path.write_text(json.dumps(meta, indent=1) + "\n")
    log.info("%s: %d calibration / %d held-out samples in %s", name, meta["n_calib"], meta["n_eval"], folder)
    publish(folder, name)
    return meta_path


def publish(folder: Path, name: str) -> None:
    """Copy a prepared case to ``$DSQC_REAL_SHARED`` when set (and refresh its README.txt)."""
    shared = os.environ.get(SHARED_DIR_ENV)
    if not shared:
        return
    dest = Path(shared)
    dest.mkdir(parents=True, exist_ok=True)
    for suffix in (".onnx", ".calib.npz", ".eval.npz", ".json"):
        shutil.copyfile(folder / f"{name}{suffix}", dest / f"{name}{suffix}")
    write_readme(dest)


def load_meta(folder: Path) -> dict[str, dict[str, Any]]:
    """Every prepared case in ``folder``: name → its json."""
    metas = {}
    for path in sorted(folder.glob("*.json")):
        meta = json.loads(path.read_text())
        if isinstance(meta, dict) and meta.get("kind") in KINDS and "model" in meta:
            metas[meta["name"]] = meta
    return metas


def write_readme(folder: Path) -> None:
    """A README.txt listing each case's files and what its inputs mean."""
    lines = [
        "Real-weight benchmark cases (dsqc tools/bench/real). For each NAME:",
        "  NAME.onnx (FP32), NAME.calib.npz (calibration), NAME.eval.npz (held-out),",
        "  NAME.json (kind, inputs, source). npz: input name -> [N, ...]; same split for every quantizer.",
        "  e.g. dsqc build NAME.onnx --target onnx --calib NAME.calib.npz --eval-data NAME.eval.npz"
        " --calib-samples N_CALIB --eval-samples N_EVAL -o out/",
        "",
    ]
    for name, meta in load_meta(folder).items():
        lines.append(f"{name}  [{meta['kind']}]  calib {meta['n_calib']}, held-out {meta['n_eval']}")
        lines.append(f"  model:  {meta.get('source', '')}")
        lines.append(f"  inputs: {meta.get('inputs', '')}")
        for key, shape in meta["shapes"].items():
            lines.append(f"    {key}: {meta['dtypes'][key]} [N, {', '.join(map(str, shape[1:]))}]")
        lines.append("")
    (folder / "README.txt").write_text("\n".join(lines))
