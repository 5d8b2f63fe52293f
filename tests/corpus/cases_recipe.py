"""Corpus: recipes (TOML syntax, unknown keys, bad values, dead regexes, contradictory rules)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from . import _models as M
from ._corpus import Built, Case


def _recipe(text: str | bytes | None, name: str = "recipe.toml") -> Callable[[Path], list[str]]:
    """mlp() (nodes fc1, relu, fc2) built with the recipe ``text`` (None: the path does not exist)."""
    def make(tmp: Path) -> list[str]:
        model = M.save(M.mlp(), tmp / "mlp.onnx")
        calib = M.npz(tmp / "calib.npz", x=M.samples((24, 8)))
        recipe = tmp / name
        if text is not None:
            recipe.write_bytes(text.encode() if isinstance(text, str) else text)
        return ["build", str(model), "--target", "onnx", "--no-latency", "--calib", str(calib),
                "--recipe", str(recipe)]
    return make


R = "dsqc: error: {tmp}/recipe.toml: "
MLP = ("mlp.int8.onnx", "report.json")

CASES = [
    Case("bad-toml", "recipe", _recipe("[quantization\nmethod = 'minmax'\n"),
         refuse="dsqc: error: {tmp}/recipe.toml: invalid TOML: Expected ']' at the end of a table "
                "declaration (at line 1, column 14); fix the recipe"),
    Case("not-utf8", "recipe", _recipe(b"[quantization]\nmethod = '\xff\xfe'\n"),
         refuse="dsqc: error: {tmp}/recipe.toml: the recipe is not UTF-8 text (byte 25); save it as UTF-8"),
    Case("unknown-top-key", "recipe", _recipe("[quantisation]\nmethod = 'minmax'\n"),
         refuse="dsqc: error: {tmp}/recipe.toml: unknown key 'quantisation' (did you mean 'quantization'?); "
                "allowed: boosters, calibration, exclude, op_types, override, quantization, verdict, "
                "verification"),
    Case("unknown-nested-key", "recipe", _recipe("[quantization]\nbits = 4\n"),
         refuse="dsqc: error: {tmp}/recipe.toml: unknown key 'quantization.bits'; allowed: activation_dtype, "
                "block_size, method, mode, per_channel, percentile, symmetric, weight_dtype, weight_limit"),
    Case("bad-value", "recipe", _recipe("[[override]]\nnodes = 'fc1'\nprecision = 'int3'\n"),
         refuse="dsqc: error: {tmp}/recipe.toml: override[0].precision = 'int3'; choose one of int4, int8, "
                "int16, fp16, fp32"),
    Case("wrong-type", "recipe", _recipe("[exclude]\nnodes = 5\n"),
         refuse="dsqc: error: {tmp}/recipe.toml: 'exclude.nodes' must be a string or a list of strings"),
    Case("invalid-regex", "recipe", _recipe("[exclude]\nnodes = ['fc(']\n"),
         refuse="dsqc: error: {tmp}/recipe.toml: 'exclude.nodes' = 'fc(' is not a valid regex (missing ), "
                "unterminated subpattern at position 2)"),
    Case("missing-recipe", "recipe", _recipe(None),
         refuse="dsqc: error: {tmp}/recipe.toml: cannot read the recipe (No such file or directory); check "
                "the --recipe path"),
    Case("dead-regex", "recipe", _recipe("[exclude]\nnodes = ['head.*']\n"),
         built=Built(MLP, ("fc1", "fc2"), warnings=("warning: recipe regex 'head.*' matched no node",))),
    Case("exclude-one-node", "recipe", _recipe("[exclude]\nnodes = ['fc2']\n"),
         built=Built(MLP, ("fc1",), fp32_nodes=("fc2",))),
    Case("contradiction-exclude-vs-override", "recipe",
         _recipe("[exclude]\nnodes = ['fc.*']\n\n[[override]]\nnodes = 'fc1'\nprecision = 'int8'\n"),
         refuse="dsqc: error: {tmp}/recipe.toml: node 'fc1' is excluded by exclude.nodes 'fc.*' but "
                "override[0] ('fc1') sets precision 'int8'; remove one of the two rules"),
    Case("contradiction-op-type-vs-exclude", "recipe",
         _recipe("[op_types.Gemm]\nprecision = 'int8'\n\n[exclude]\nop_types = ['Gemm']\n"),
         refuse="dsqc: error: {tmp}/recipe.toml: op_types.Gemm.precision = 'int8' but exclude.op_types "
                "keeps Gemm in fp32; remove one of the two rules"),
    Case("overrides-in-order", "recipe",
         _recipe("[[override]]\nnodes = 'fc.*'\nprecision = 'fp32'\n\n"
                 "[[override]]\nnodes = 'fc2'\nprecision = 'int8'\n"),
         built=Built(MLP, ("fc2",), fp32_nodes=("fc1",))),
]
