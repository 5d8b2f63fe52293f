"""Recipe parsing: overrides, exclusions, and one clear error per mistake."""

from __future__ import annotations

from pathlib import Path

import pytest

from dsqc.errors import RecipeError
from dsqc.quant.recipe import load_recipe, parse_recipe
from dsqc.quant.spec import Precision


def test_overrides_and_exclusions(tmp_path: Path) -> None:
    path = tmp_path / "r.toml"
    path.write_text('[quantization]\nmethod = "minmax"\n[op_types.MatMul]\nweight_dtype = "int4"\n'
                    '[[override]]\nnodes = "head.*"\nprecision = "fp32"\n'
                    '[exclude]\nop_types = ["Gemm"]\nnodes = ["never.*"]\n')
    recipe = load_recipe(path)
    assert recipe.method == "minmax"
    assert recipe.options_for("head.fc", "Conv").precision is Precision.FP32
    assert recipe.options_for("body", "MatMul").weight_dtype == "int4"
    assert recipe.options_for("x", "Gemm").precision is Precision.FP32
    assert recipe.options_for("x", "Conv").precision is None
    assert recipe.unmatched() == ["never.*"]


@pytest.mark.parametrize(("text", "needle"), [
    ("[quantization]\nmethd = 'minmax'\n", "unknown key 'quantization.methd'"),
    ("[quantization]\nmethod = 'best'\n", "quantization.method = 'best'"),
    ("[[override]]\nnodes = '(['\nprecision = 'fp32'\n", "not a valid regex"),
    ("[[override]]\nnodes = 'a'\nprecision = 'int2'\n", "override[0].precision"),
    ("[quantization\n", "invalid TOML"),
    ("[colors]\nred = 1\n", "unknown key 'colors'"),
])
def test_bad_recipes(text: str, needle: str) -> None:
    import tomllib

    with pytest.raises(RecipeError) as info:
        parse_recipe(tomllib.loads(text)) if "invalid" not in needle else _load_text(text)
    assert needle in str(info.value)


def _load_text(text: str) -> None:
    import tempfile

    with tempfile.NamedTemporaryFile("w", suffix=".toml", delete=False) as handle:
        handle.write(text)
    load_recipe(Path(handle.name))
