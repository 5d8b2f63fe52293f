"""The fleet manifest (``dsqc batch fleet.toml``): its schema, its validation and its expansion into items.

Every relative path is relative to the manifest's folder; every path may be a glob (``*``, ``?``, ``[``)::

    out = "fleet"                          # output folder (default: <manifest stem>.out); -o overrides
    targets = ["onnx", "tflite"]           # required here or in every [[models]]
    recipes = ["none", "recipes/*.toml"]   # optional; "none" = no recipe (the default: ["none"])
    calib = ["random"]                     # calibration sets: random, mnist, module:function, a file or
                                           # folder, or a glob (default: ["random"])

    [limits]                               # per item; each key can be overridden in [[models]]
    timeout_s = 900                        # wall clock; the item's process group is killed after it
    memory_mb = 4096                       # peak resident memory of the item's processes; killed above it
    cpus = 1                               # ORT threads in the item, and the CPUs a Ray task asks for

    [build]                                # `dsqc build` options for every item
    calib_samples = 256                    # calib_batch, eval_samples, eval_data, method, precision,
    latency = false                        # min_sqnr, max_drop, strict, task_metric, outputs: `dsqc build`
    options = { isa = "vnni" }             # -B key=value (the target rejects keys it does not know)

    [[models]]                             # one table per model file or glob
    path = "zoo/*.onnx"                    # required; each match is one model named by its file stem
    name = "resnet"                        # optional, only when path names one file
    targets = ["hls"]                      # optional overrides of the top-level lists,
    memory_mb = 2000                       # of [limits] (timeout_s, memory_mb, cpus)
    build = { eval_samples = 16 }          # and of [build] (merged, options included)

Items are models × calibration sets × targets × recipes. Each builds into ``OUT/<model>/<target>``, with
``-<recipe stem>`` appended when the model has more than one recipe and ``-<calib name>`` when it has more
than one calibration set. Any mistake is one ``ManifestError`` line naming the file and the key.
"""

from __future__ import annotations

import glob
import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from dsqc.backends.registry import names
from dsqc.errors import DsqcError

BUILTIN_DATA = ("random", "mnist")
NO_RECIPE = "none"
TOP_KEYS = {"out", "targets", "recipes", "calib", "limits", "build", "models"}
LIMIT_KEYS = {"timeout_s": float, "memory_mb": int, "cpus": int}
LIMIT_DEFAULTS: dict[str, float | int] = {"timeout_s": 900.0, "memory_mb": 4096, "cpus": 1}
# [build] key → (type, `dsqc build` flag); bools are flags without a value, `latency` is inverted.
BUILD_KEYS: dict[str, tuple[type, str]] = {
    "precision": (str, "--precision"), "calib_samples": (int, "--calib-samples"),
    "calib_batch": (int, "--calib-batch"), "eval_samples": (int, "--eval-samples"),
    "eval_data": (str, "--eval-data"), "method": (str, "--method"), "min_sqnr": (float, "--min-sqnr"),
    "max_drop": (float, "--max-drop"), "task_metric": (str, "--task-metric"), "strict": (bool, "--strict"),
    "latency": (bool, "--no-latency"), "options": (dict, "-B"), "outputs": (str, "--outputs"),
}
MODEL_KEYS = {"path", "name", "targets", "recipes", "calib", "build", *LIMIT_KEYS}
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]*")
_CALLABLE = re.compile(r"[A-Za-z_][\w.]*:[A-Za-z_]\w*")
_GLOB = re.compile(r"[*?\[]")


class ManifestError(DsqcError):
    """The fleet manifest is unreadable or invalid (exit 2)."""


@dataclass(frozen=True)
class Limits:
    timeout_s: float
    memory_mb: int
    cpus: int


@dataclass(frozen=True)
class Data:
    """A calibration set as `dsqc build --calib` takes it, and the short name items use."""

    spec: str  # absolute path, or a built-in name / module:function
    name: str

    @property
    def path(self) -> Path | None:
        return None if self.spec in BUILTIN_DATA or _CALLABLE.fullmatch(self.spec) else Path(self.spec)


@dataclass(frozen=True)
class Item:
    """One build: a model for a target with a recipe and a calibration set, under its limits."""

    model_name: str
    model: Path
    target: str
    recipe: Path | None
    calib: Data
    folder: str  # "<target>[-<recipe>][-<calib>]"
    build: dict[str, Any] = field(default_factory=dict, hash=False)
    limits: Limits = Limits(900.0, 4096, 1)

    @property
    def id(self) -> str:
        return f"{self.model_name}/{self.folder}"

    def argv(self, out_dir: Path, model: Path | None = None, recipe: Path | None = None,
             calib: str | None = None) -> list[str]:
        """``dsqc build`` arguments; ``model``/``recipe``/``calib`` replace the paths (a worker's copies)."""
        args = ["build", str(model or self.model), "--target", self.target, "-o", str(out_dir),
                "--calib", calib or self.calib.spec]
        if self.recipe is not None:
            args += ["--recipe", str(recipe or self.recipe)]
        for key, value in sorted(self.build.items()):
            kind, flag = BUILD_KEYS[key]
            if key == "latency":
                args += [] if value else [flag]
            elif kind is bool:
                args += [flag] if value else []
            elif key == "options":
                for opt, raw in sorted(value.items()):
                    args += [flag, f"{opt}={str(raw).lower() if isinstance(raw, bool) else raw}"]
            else:
                args += [flag, str(value)]
        return args


@dataclass(frozen=True)
class Fleet:
    manifest: Path
    out: Path
    items: list[Item]


def load_fleet(path: Path, out: Path | None = None) -> Fleet:
    """Read, validate and expand ``path``; ``out`` overrides the manifest's ``out``."""
    where = str(path)
    try:
        body = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ManifestError(f"{where}: no such manifest file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ManifestError(f"{where}: unreadable ({exc})") from None
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"{where}: not valid TOML: {exc}") from None
    root = path.resolve().parent
    _known(body, TOP_KEYS, where, "")
    limits = _limits(body.get("limits", {}), dict(LIMIT_DEFAULTS), where, "limits")
    build = _build(body.get("build", {}), root, where, "build")
    targets = _targets(body.get("targets"), where, "targets") if "targets" in body else None
    recipes = _recipes(body.get("recipes", [NO_RECIPE]), root, where, "recipes")
    calib = _calib(body.get("calib", ["random"]), root, where, "calib")
    models = body.get("models")
    if not isinstance(models, list) or not models or not all(isinstance(m, dict) for m in models):
        raise ManifestError(f"{where}: models: give at least one [[models]] table with a path")
    items: list[Item] = []
    for index, entry in enumerate(models):
        items += _expand(entry, f"models[{index}]", root, where, targets, recipes, calib, limits, build)
    seen: dict[str, str] = {}
    for item in items:
        if item.id in seen:
            raise ManifestError(f"{where}: {seen[item.id]} and {item.model} both make item {item.id!r}; "
                                "give one of them a distinct name")
        seen[item.id] = str(item.model)
    default_out = root / _string(body.get("out", f"{path.stem}.out"), where, "out")
    return Fleet(path, Path(out if out is not None else default_out).resolve(), items)


def _expand(entry: dict[str, Any], key: str, root: Path, where: str, targets: list[str] | None,
            recipes: list[Path | None], calib: list[Data], limits: dict[str, Any],
            build: dict[str, Any]) -> list[Item]:
    _known(entry, MODEL_KEYS, where, key + ".")
    if "path" not in entry:
        raise ManifestError(f"{where}: {key}.path: missing; name the model file (.onnx) or a glob")
    files = _paths(_string(entry["path"], where, f"{key}.path"), root, where, f"{key}.path", files_only=True)
    name = entry.get("name")
    if name is not None and len(files) != 1:
        raise ManifestError(f"{where}: {key}.name: only for a path that names one file, not {len(files)}")
    m_targets = _targets(entry["targets"], where, f"{key}.targets") if "targets" in entry else targets
    if m_targets is None:
        raise ManifestError(f"{where}: {key}.targets: missing; set top-level targets or the model's own")
    m_recipes = _recipes(entry["recipes"], root, where, f"{key}.recipes") if "recipes" in entry else recipes
    m_calib = _calib(entry["calib"], root, where, f"{key}.calib") if "calib" in entry else calib
    m_limits = Limits(**_limits({k: entry[k] for k in LIMIT_KEYS if k in entry}, dict(limits), where, key))
    m_build = {**build, **_build(entry.get("build", {}), root, where, f"{key}.build")}
    if "options" in build and "options" in entry.get("build", {}):
        m_build["options"] = {**build["options"], **entry["build"]["options"]}
    items = []
    for file in files:
        model_name = _name(name if name is not None else file.stem, where,
                           f"{key}.name" if name is not None else f"{key}.path ({file.name})")
        for data in m_calib:
            for target in m_targets:
                for recipe in m_recipes:
                    folder = target
                    if len(m_recipes) > 1:
                        folder += f"-{recipe.stem if recipe else NO_RECIPE}"
                    if len(m_calib) > 1:
                        folder += f"-{data.name}"
                    items.append(Item(model_name, file, target, recipe, data, folder, m_build, m_limits))
    return items


def _known(table: dict[str, Any], known: set[str], where: str, prefix: str) -> None:
    for key in table:
        if key not in known:
            raise ManifestError(f"{where}: {prefix}{key}: unknown key; known keys: "
                                f"{', '.join(sorted(known))}")


def _string(value: Any, where: str, key: str) -> str:
    if not isinstance(value, str) or not value:
        raise ManifestError(f"{where}: {key}: expected a non-empty string, got {value!r}")
    return value


def _list(value: Any, where: str, key: str) -> list[str]:
    values = [value] if isinstance(value, str) else value
    if not isinstance(values, list) or not values or not all(isinstance(v, str) and v for v in values):
        raise ManifestError(f"{where}: {key}: expected a string or a non-empty list of strings, "
                            f"got {value!r}")
    return values


def _name(name: Any, where: str, key: str) -> str:
    if not isinstance(name, str) or not _SAFE_NAME.fullmatch(name):
        raise ManifestError(f"{where}: {key}: {name!r} is not usable as a folder name (letters, digits, "
                            "'.', '_', '+', '-'); set name = \"...\"")
    return name


def _paths(pattern: str, root: Path, where: str, key: str, files_only: bool) -> list[Path]:
    full = Path(pattern).expanduser()
    full = Path(os.path.normpath(full if full.is_absolute() else root / full))
    if _GLOB.search(pattern):
        found = sorted(Path(p) for p in glob.glob(str(full)))
        found = [p for p in found if p.is_file()] if files_only else found
        if not found:
            raise ManifestError(f"{where}: {key}: {pattern!r} matches no {'file' if files_only else 'path'}")
        return found
    if not full.exists() or (files_only and not full.is_file()):
        raise ManifestError(f"{where}: {key}: {pattern!r}: no such file ({full})")
    return [full]


def _targets(value: Any, where: str, key: str) -> list[str]:
    targets = _list(value, where, key)
    for target in targets:
        if target not in names():
            raise ManifestError(f"{where}: {key}: unknown target {target!r}; choose from "
                                f"{', '.join(names())}")
    if len(set(targets)) != len(targets):
        raise ManifestError(f"{where}: {key}: a target is listed twice")
    return targets


def _recipes(value: Any, root: Path, where: str, key: str) -> list[Path | None]:
    recipes: list[Path | None] = []
    for spec in _list(value, where, key):
        recipes += [None] if spec == NO_RECIPE else _paths(spec, root, where, key, files_only=True)
    stems = [r.stem if r else NO_RECIPE for r in recipes]
    clash = next((s for s in stems if stems.count(s) > 1), None)
    if clash is not None:
        raise ManifestError(f"{where}: {key}: two recipes are named {clash!r} (file stems name the folders)")
    return recipes


def _calib(value: Any, root: Path, where: str, key: str) -> list[Data]:
    sets: list[Data] = []
    for spec in _list(value, where, key):
        if spec in BUILTIN_DATA:
            sets.append(Data(spec, spec))
        elif _CALLABLE.fullmatch(spec) and not (root / spec).exists():
            sets.append(Data(spec, spec.rpartition(":")[2]))
        else:
            sets += [Data(str(p), _name(p.stem, where, f"{key} ({p.name})"))
                     for p in _paths(spec, root, where, key, files_only=False)]
    names = [d.name for d in sets]
    clash = next((n for n in names if names.count(n) > 1), None)
    if clash is not None:
        raise ManifestError(f"{where}: {key}: two calibration sets are named {clash!r}")
    return sets


def _limits(table: Any, base: dict[str, Any], where: str, key: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ManifestError(f"{where}: {key}: expected a table")
    if key == "limits":
        _known(table, set(LIMIT_KEYS), where, "limits.")
    for name, value in table.items():
        kind = LIMIT_KEYS[name]
        ok = isinstance(value, int | float) and not isinstance(value, bool) and value > 0
        if not ok or (kind is int and not isinstance(value, int)):
            what = "a positive integer" if kind is int else "a positive number"
            raise ManifestError(f"{where}: {key}.{name}: expected {what}, got {value!r}")
        base[name] = kind(value)
    return base


def _build(table: Any, root: Path, where: str, key: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ManifestError(f"{where}: {key}: expected a table of dsqc build options")
    _known(table, set(BUILD_KEYS), where, key + ".")
    for name, value in table.items():
        kind = BUILD_KEYS[name][0]
        if kind is float and isinstance(value, int) and not isinstance(value, bool):
            continue
        if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ManifestError(f"{where}: {key}.{name}: expected {kind.__name__}, got {value!r}")
        scalar = (str, int, float, bool)
        scalars = isinstance(value, dict) and all(isinstance(v, scalar) for v in value.values())
        if name == "options" and not scalars:
            raise ManifestError(f"{where}: {key}.options: values must be strings, numbers or booleans")
    table = dict(table)
    if "eval_data" in table:
        data = _calib(table["eval_data"], root, where, f"{key}.eval_data")
        if len(data) != 1:
            raise ManifestError(f"{where}: {key}.eval_data: names {len(data)} data sets; give one")
        table["eval_data"] = data[0].spec
    return table
