"""Target options (``-B key=value``): one parser for every target.

A target states its options as a frozen dataclass; the field names are the keys, the annotations
(``bool``, ``int``, ``float``, ``str``, optionally ``| None``) the types, and ``choices`` in a field's
metadata the allowed values. Strings from the command line are converted to the field's type; a key
the target does not know, or a value of the wrong type or outside the choices, is one ``RecipeError``
naming the target and the key and listing what it knows.
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any, TypeVar

from dsqc.errors import RecipeError

T = TypeVar("T")
_TRUE, _FALSE = ("true",), ("false",)


def known_keys(spec: type[Any] | None) -> list[str]:
    return sorted(f.name for f in dataclasses.fields(spec)) if spec is not None else []


def check_options(target: str, spec: type[Any] | None, raw: dict[str, Any]) -> dict[str, Any]:
    """The given options converted to their types (only the keys given; defaults are the dataclass's)."""
    fields = {f.name: f for f in dataclasses.fields(spec)} if spec is not None else {}
    typed: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            known = ", ".join(known_keys(spec)) or "none"
            raise RecipeError(f"{target}: unknown target option '{key}' (-B {key}=…); "
                              f"options of {target}: {known}")
        field = fields[key]
        annotation = field.type if isinstance(field.type, str) else getattr(field.type, "__name__", "")
        typed[key] = _convert(target, key, annotation, value)
        choices = field.metadata.get("choices")
        if choices is not None and typed[key] not in choices:
            listed = ", ".join(str(c).lower() if isinstance(c, bool) else str(c) for c in choices)
            raise RecipeError(f"{target}: -B {key}={value!r}; choose one of {listed}")
    return typed


def parse_options(target: str, spec: type[T], raw: dict[str, Any]) -> T:
    """``spec`` built from ``raw`` after ``check_options``."""
    return spec(**check_options(target, spec, raw))


def _convert(target: str, key: str, annotation: str, value: Any) -> Any:
    kind = annotation.replace(" ", "").split("|")[0]
    optional = "None" in annotation
    if value is None and optional:
        return None
    if kind == "bool":
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in (*_TRUE, *_FALSE):
            return value.lower() in _TRUE
        raise RecipeError(f"{target}: -B {key} must be true or false, got {value!r}")
    if kind in ("int", "float"):
        if isinstance(value, str):
            with contextlib.suppress(ValueError):
                value = int(value) if kind == "int" else float(value)
        number = (int,) if kind == "int" else (int, float)
        if isinstance(value, bool) or not isinstance(value, number):
            raise RecipeError(f"{target}: -B {key} must be {'an integer' if kind == 'int' else 'a number'}, "
                              f"got {value!r}")
        return value
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise RecipeError(f"{target}: -B {key} must be a string, got {value!r}")
    return str(value)
