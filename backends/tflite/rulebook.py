"""ONNX op → lowering rule. Rule modules register here; ``lower.py`` dispatches through ``RULES``."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .lowerer import Lowerer

Rule = Callable[["Lowerer", Any], None]
RULES: dict[str, Rule] = {}


def rule(*ops: str) -> Callable[[Rule], Rule]:
    """Decorator: ``@rule("Conv")`` makes the function lower every ONNX node of that op type."""

    def register(fn: Rule) -> Rule:
        for op in ops:
            if op in RULES:
                raise ValueError(f"two TFLite lowering rules for ONNX op {op}")
            RULES[op] = fn
        return fn

    return register
