"""A chosen precision per node, written as an editable TOML recipe that reproduces the plan.

The file is the user's recipe (all its tables) followed by one exact-name ``[[override]]`` per node
the search decided, its reason as a comment. Overrides apply in order and the last match wins, so
the generated ones take effect; edit a ``precision`` line and feed the file back with ``--recipe``.
"""

from __future__ import annotations

import dataclasses
import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

import tomllib

from dsqc.quant.recipe import Recipe, parse_recipe
from dsqc.quant.spec import Precision

RECIPE_NAME = "plan.recipe.toml"
_QUANT_KEYS = ("method", "percentile", "activation_dtype", "symmetric", "per_channel", "weight_dtype",
               "block_size", "weight_limit")
_HANDLED = {*_QUANT_KEYS, "op_types", "overrides", "exclude_nodes", "exclude_ops", "calibration", "source"}


def plan_recipe_text(base: Recipe, precisions: Mapping[str, Precision], reasons: Mapping[str, str],
                     header: Sequence[str] = (), exclude_ops: Sequence[str] = ()) -> str:
    """TOML text: ``base`` (plus ``exclude_ops``) and one override per node in ``precisions``."""
    lines = [f"# {line}" for line in header]
    quant = {k: getattr(base, k) for k in _QUANT_KEYS if getattr(base, k) is not None}
    lines += ["", "[quantization]", *(f"{k} = {_value(v)}" for k, v in quant.items())]
    for op, table in sorted(base.op_types.items()):
        lines += ["", f"[op_types.{_key(op)}]", *(f"{k} = {_value(v)}" for k, v in table.items())]
    excluded_ops = sorted(base.exclude_ops | set(exclude_ops))
    if base.exclude_nodes or excluded_ops:
        lines += ["", "[exclude]"]
        if base.exclude_nodes:
            lines.append(f"nodes = {_value([r.pattern.pattern for r in base.exclude_nodes])}")
        if excluded_ops:
            lines.append(f"op_types = {_value(excluded_ops)}")
    lines += _tables("calibration", base.calibration)
    for field in dataclasses.fields(base):  # tables added to Recipe later (e.g. [boosters])
        value = getattr(base, field.name)
        if field.name not in _HANDLED and isinstance(value, dict) and value:
            lines += _tables(field.name, value)
    for override in base.overrides:
        lines += ["", "[[override]]", f"nodes = {_value(override.pattern.pattern)}",
                  *(f"{k} = {_value(v)}" for k, v in override.options.items())]
    if precisions:
        lines += ["", "# --- one entry per node chosen by the search (last match wins) ---"]
    for name, precision in precisions.items():
        reason = reasons.get(name, "").replace("\n", " ")
        lines += ["", f"[[override]]  # {reason}" if reason else "[[override]]",
                  f"nodes = {_value(re.escape(name))}", f'precision = "{precision.value}"']
    return "\n".join(lines).lstrip("\n") + "\n"


def parse_plan_recipe(text: str, label: str) -> Recipe:
    return parse_recipe(tomllib.loads(text), label)


def _tables(prefix: str, table: Mapping[str, Any]) -> list[str]:
    scalars = {k: v for k, v in table.items() if not isinstance(v, dict)}
    lines = ["", f"[{prefix}]", *(f"{_key(k)} = {_value(v)}" for k, v in scalars.items())] if scalars else []
    for key, value in table.items():
        if isinstance(value, dict):
            lines += _tables(f"{prefix}.{_key(key)}", value)
    return lines


def _key(key: str) -> str:
    return key if re.fullmatch(r"[A-Za-z0-9_-]+", key) else _value(key)


def _value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value, ensure_ascii=False)
    if isinstance(value, list | tuple | set):
        return "[" + ", ".join(_value(v) for v in value) + "]"
    raise TypeError(f"cannot write {type(value).__name__} into a recipe")
