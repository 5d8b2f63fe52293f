"""TOML recipe: defaults, overrides by op type and by node-name regex, exclusions, per-node precision.

```toml
[quantization]                 # defaults (all optional)
mode = "static"                # static | dynamic | auto (activation scales calibrated, at run time, per node)
method = "select"              # select | minmax | auto | percentile | entropy | mse (select: min/max or
                               # percentile by output SQNR on calibration samples; auto: mse on conv inputs)
percentile = 99.99
activation_dtype = "uint8"     # uint8 | int8 (a target profile may force one)
symmetric = false              # symmetric activations
per_channel = true             # per-channel weights
weight_dtype = "int8"          # int8 | int4 (int4: MatMul/Gemm weights only)
block_size = 32                # int4 block size along K (0 = per channel)
weight_limit = 127             # int8 weights in [-limit, limit] (onnx target default 64 = 7 bits)

[op_types.Sigmoid]             # by op type: precision and weight options
precision = "int8"

[[override]]                   # by node-name regex, applied in order, last match wins
nodes = "encoder\\.layer\\.0\\..*"
precision = "fp32"             # int8 | int4 | int16 | fp16 | fp32 (int16: activations int16, hls)

[exclude]                      # keep in FP32
nodes = ["head.*"]
op_types = ["Softmax"]

[boosters]                     # PTQ boosters (compiler/quant/boosters.py)
cle = true                     # cross-layer equalization of Conv → ReLU → Conv chains
smoothquant = 0.8              # SmoothQuant alpha for MatMul/Gemm inputs with outlier channels
bias_correction = true
adaround = true                # learned rounding of weights (AdaRound); adaround_iterations = 500
gptq = true                    # GPTQ on Gemm/MatMul weights; gptq_act_order = false

[verdict]                      # limits of the build's verdict (compiler/driver/verdict.py)
degraded_sqnr_db = 15

[verification]                 # how the build's verification measures (compiler/verify.py)
mask_padding = true            # [batch, seq] outputs over attention_mask = 1 positions only

[calibration.image]            # preprocessing for image-folder calibration data
size = 256
crop = 224
```
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import tomllib

from dsqc.errors import RecipeError
from dsqc.quant.spec import Precision
from dsqc.range_methods import DEFAULT_METHOD, METHODS

_DEFAULT_KEYS = {"mode", "method", "percentile", "activation_dtype", "symmetric", "per_channel",
                 "weight_dtype", "block_size", "weight_limit"}
_OPTION_KEYS = {"precision", "weight_dtype", "block_size", "per_channel", "weight_limit"}
_TOP_KEYS = {"quantization", "op_types", "override", "exclude", "calibration", "boosters", "verdict",
             "verification"}
_VERIFICATION_KEYS = {"mask_padding"}


@dataclass(frozen=True)
class NodeOptions:
    """Options that can differ per node (op-type and regex overrides)."""

    precision: Precision | None = None
    weight_dtype: str = "int8"
    block_size: int = 32
    per_channel: bool = True
    weight_limit: int | None = None


@dataclass
class Override:
    pattern: re.Pattern[str]
    options: dict[str, Any]
    matched: int = 0
    where: str = ""  # the recipe key it came from (``override[1]``); empty for generated overrides


@dataclass
class Recipe:
    mode: str = "static"
    mode_asked: bool = False  # the recipe names quantization.mode (repair then keeps that mode)
    method: str = DEFAULT_METHOD
    percentile: float = 99.99
    activation_dtype: str | None = None
    symmetric: bool | None = None
    per_channel: bool = True
    weight_dtype: str = "int8"
    block_size: int = 32
    weight_limit: int | None = None
    op_types: dict[str, dict[str, Any]] = field(default_factory=dict)
    overrides: list[Override] = field(default_factory=list)
    exclude_nodes: list[Override] = field(default_factory=list)
    exclude_ops: set[str] = field(default_factory=set)
    calibration: dict[str, Any] = field(default_factory=dict)
    boosters: dict[str, Any] = field(default_factory=dict)
    verdict: dict[str, Any] = field(default_factory=dict)  # checked by verdict.Thresholds.from_table
    verification: dict[str, Any] = field(default_factory=dict)  # keys checked here (_VERIFICATION_KEYS)
    fallback_ops: frozenset[str] = frozenset()
    source: str = "defaults"

    def options_for(self, node_name: str, op_type: str) -> NodeOptions:
        """Merge defaults, the op-type table and matching regex overrides (last wins)."""
        merged: dict[str, Any] = {"weight_dtype": self.weight_dtype, "block_size": self.block_size,
                                  "per_channel": self.per_channel, "weight_limit": self.weight_limit}
        merged.update(self.op_types.get(op_type, {}))
        quantizing: Override | None = None  # the last user override asking for a quantized precision
        for override in self.overrides:
            if override.pattern.fullmatch(node_name):
                override.matched += 1
                merged.update(override.options)
                if override.where and "precision" in override.options:
                    quantizing = override if override.options["precision"] != "fp32" else None
        excluded = op_type in self.exclude_ops
        for rule in self.exclude_nodes:
            if rule.pattern.fullmatch(node_name):
                rule.matched += 1
                excluded = True
                if quantizing is not None:
                    raise RecipeError(
                        f"{self.source}: node '{node_name}' is excluded by exclude.nodes "
                        f"'{rule.pattern.pattern}' but {quantizing.where} ('{quantizing.pattern.pattern}') "
                        f"sets precision '{quantizing.options['precision']}'; remove one of the two rules")
        if excluded or (op_type in self.fallback_ops and "precision" not in merged):
            merged["precision"] = "fp32"
        precision = merged.pop("precision", None)
        return NodeOptions(precision=Precision(precision) if precision else None, **merged)

    @property
    def mask_padding(self) -> bool:
        """``[verification] mask_padding`` (default true): padded tokens left out of verification."""
        return bool(self.verification.get("mask_padding", True))

    def unmatched(self) -> list[str]:
        """Regexes that matched no node: almost always a typo, reported as a warning."""
        rules = [*self.overrides, *self.exclude_nodes]
        return [rule.pattern.pattern for rule in rules if rule.matched == 0]


def load_recipe(path: Path | None) -> Recipe:
    if path is None:
        return Recipe()
    try:
        data = tomllib.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the recipe ({exc.strerror}); check the --recipe path") \
            from exc
    except UnicodeDecodeError as exc:
        raise RecipeError(f"{path}: the recipe is not UTF-8 text (byte {exc.start}); save it as UTF-8") \
            from exc
    except tomllib.TOMLDecodeError as exc:
        raise RecipeError(f"{path}: invalid TOML: {exc}; fix the recipe") from exc
    return parse_recipe(data, str(path))


def parse_recipe(data: dict[str, Any], label: str = "recipe") -> Recipe:
    _unknown(data, _TOP_KEYS, label, "")
    recipe = Recipe(source=label)
    defaults = _table(data.get("quantization", {}), label, "quantization")
    _unknown(defaults, _DEFAULT_KEYS, label, "quantization.")
    for key, value in defaults.items():
        setattr(recipe, key, _check_value(key, value, label, f"quantization.{key}"))
    recipe.mode_asked = "mode" in defaults
    for op, table in _table(data.get("op_types", {}), label, "op_types").items():
        table = _table(table, label, f"op_types.{op}")
        _unknown(table, _OPTION_KEYS, label, f"op_types.{op}.")
        recipe.op_types[op] = {k: _check_value(k, v, label, f"op_types.{op}.{k}") for k, v in table.items()}
    overrides = data.get("override", [])
    if not isinstance(overrides, list):
        raise RecipeError(f"{label}: 'override' must be an array of tables ([[override]])")
    for i, table in enumerate(overrides):
        table = dict(_table(table, label, f"override[{i}]"))
        _unknown(table, _OPTION_KEYS | {"nodes"}, label, f"override[{i}].")
        pattern = _regex(table.pop("nodes", None), label, f"override[{i}].nodes")
        opts = {k: _check_value(k, v, label, f"override[{i}].{k}") for k, v in table.items()}
        recipe.overrides.append(Override(pattern, opts, where=f"override[{i}]"))
    exclude = _table(data.get("exclude", {}), label, "exclude")
    _unknown(exclude, {"nodes", "op_types"}, label, "exclude.")
    recipe.exclude_nodes = [Override(_regex(p, label, "exclude.nodes"), {})
                            for p in _strings(exclude.get("nodes", []), label, "exclude.nodes")]
    recipe.exclude_ops = set(_strings(exclude.get("op_types", []), label, "exclude.op_types"))
    for op in sorted(recipe.exclude_ops):
        precision = recipe.op_types.get(op, {}).get("precision", "fp32")
        if precision != "fp32":
            raise RecipeError(f"{label}: op_types.{op}.precision = '{precision}' but exclude.op_types keeps "
                              f"{op} in fp32; remove one of the two rules")
    recipe.calibration = _table(data.get("calibration", {}), label, "calibration")
    recipe.boosters = _table(data.get("boosters", {}), label, "boosters")
    recipe.verdict = _table(data.get("verdict", {}), label, "verdict")
    recipe.verification = _table(data.get("verification", {}), label, "verification")
    _unknown(recipe.verification, _VERIFICATION_KEYS, label, "verification.")
    for key, value in recipe.verification.items():
        _check_value(key, value, label, f"verification.{key}")
    return recipe


def _check_value(key: str, value: Any, label: str, where: str) -> Any:
    choices: dict[str, tuple[Any, ...]] = {
        "mode": ("static", "dynamic", "auto"), "method": METHODS, "activation_dtype": ("uint8", "int8"),
        "weight_dtype": ("int8", "int4"),
        "precision": tuple(p.value for p in Precision)}
    if key in choices and value not in choices[key]:
        raise RecipeError(f"{label}: {where} = {value!r}; choose one of {', '.join(choices[key])}")
    if key in ("symmetric", "per_channel", "mask_padding") and not isinstance(value, bool):
        raise RecipeError(f"{label}: {where} must be true or false")
    if key == "block_size" and (not isinstance(value, int) or value < 0 or value % 2):
        raise RecipeError(f"{label}: {where} must be an even integer ≥ 0 (0 = per channel)")
    if key == "weight_limit" and not (isinstance(value, int) and 1 <= value <= 127):
        raise RecipeError(f"{label}: {where} must be an integer in [1, 127] (64 = 7-bit weights)")
    if key == "percentile" and not (isinstance(value, int | float) and 50 < value <= 100):
        raise RecipeError(f"{label}: {where} must be a number in (50, 100]")
    return value


def _unknown(table: dict[str, Any], allowed: set[str], label: str, prefix: str) -> None:
    for key in table:
        if key not in allowed:
            close = difflib.get_close_matches(key, allowed, n=1)
            hint = f" (did you mean '{prefix}{close[0]}'?)" if close else ""
            raise RecipeError(
                f"{label}: unknown key '{prefix}{key}'{hint}; allowed: {', '.join(sorted(allowed))}")


def _table(value: Any, label: str, where: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise RecipeError(f"{label}: '{where}' must be a table")
    return value


def _strings(value: Any, label: str, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise RecipeError(f"{label}: '{where}' must be a string or a list of strings")
    return value


def _regex(value: Any, label: str, where: str) -> re.Pattern[str]:
    if not isinstance(value, str):
        raise RecipeError(f"{label}: '{where}' must be a regex string")
    try:
        return re.compile(value)
    except re.error as exc:
        raise RecipeError(f"{label}: '{where}' = {value!r} is not a valid regex ({exc})") from exc
