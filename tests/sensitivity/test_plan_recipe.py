"""The plan written as a recipe reads back to the same options for every node."""

from __future__ import annotations

import re

import pytest

from dsqc.autoprec.plan_recipe import parse_plan_recipe, plan_recipe_text
from dsqc.quant.recipe import parse_recipe
from dsqc.quant.spec import Precision

NAMES = ["/model/encoder/layer.0/attention/self/query/MatMul", "conv[1]+(x)", 'quote"d\\name', "ünïcode"]


def test_written_recipe_reads_back_with_the_users_tables() -> None:
    base = parse_recipe({
        "quantization": {"method": "percentile", "percentile": 99.9, "symmetric": True, "block_size": 64,
                         "weight_limit": 127},
        "op_types": {"Sigmoid": {"precision": "int8"}},
        "override": [{"nodes": "head.*", "precision": "fp32"}],
        "exclude": {"nodes": ["stem.*"], "op_types": ["Softmax"]},
        "calibration": {"image": {"size": 256, "crop": 224}},
    }, "user")
    chosen = (Precision.INT4, Precision.INT8, Precision.FP16, Precision.FP32)
    precisions = dict(zip(NAMES, chosen, strict=True))
    text = plan_recipe_text(base, precisions, {NAMES[0]: "int4: cheap # and safe"}, ["header line"],
                            exclude_ops=["Gelu"])
    assert text.startswith("# header line\n")
    again = parse_plan_recipe(text, "plan")
    for key in ("method", "percentile", "symmetric", "block_size", "weight_limit", "op_types", "calibration"):
        assert getattr(again, key) == getattr(base, key), key
    assert again.exclude_ops == {"Softmax", "Gelu"}
    assert [r.pattern.pattern for r in again.exclude_nodes] == ["stem.*"]
    for name, precision in precisions.items():
        assert again.options_for(name, "MatMul").precision is precision
    assert again.options_for("head.fc", "Gemm").precision is Precision.FP32
    assert again.options_for(NAMES[0] + "x", "MatMul").precision is None, "names match exactly"
    assert all(o.matched for o in again.overrides[1:])
    assert re.search(r"\[\[override\]\]  # int4: cheap # and safe", text)


@pytest.mark.parametrize("value", [0.5, 1e-5, float("inf")])
def test_numbers_round_trip(value: float) -> None:
    base = parse_recipe({"quantization": {"percentile": 99.0}}, "user")
    base.calibration = {"image": {"scale": value}}
    assert parse_plan_recipe(plan_recipe_text(base, {}, {}), "p").calibration["image"]["scale"] == value
