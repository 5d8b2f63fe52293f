"""Node names at load: every node named, duplicates renamed, deterministically (model_checks.name_nodes)."""

from __future__ import annotations

import onnx

from dsqc.model_checks import name_nodes
from tests.corpus import _models as M


def _names(proto: onnx.ModelProto) -> list[str]:
    return [n.name for n in proto.graph.node]


def test_unnamed_nodes_get_op_and_index_and_explicit_names_win() -> None:
    proto = M.mlp(names=("", "Gemm_0", ""))  # an explicit name equal to a generated one
    name_nodes(proto, "m")
    assert _names(proto) == ["Gemm_0_1", "Gemm_0", "Gemm_2"]


def test_duplicates_keep_the_first_and_number_the_rest() -> None:
    proto = M.mlp(names=("n", "n", "n_1"))
    name_nodes(proto, "m")
    assert _names(proto) == ["n", "n_2", "n_1"]


def test_same_file_same_names_and_subgraphs_prefixed() -> None:
    first, second = M.if_model(), M.if_model()
    for proto in (first, second):
        for node in proto.graph.node:
            node.name = ""
        for attr in proto.graph.node[3].attribute:
            attr.g.node[0].name = ""
        name_nodes(proto, "m")
    assert first.SerializeToString() == second.SerializeToString()
    branch = first.graph.node[3]
    assert branch.name == "If_3"
    inner = sorted(a.g.node[0].name for a in branch.attribute)
    assert inner == ["If_3/else_branch/Sigmoid_0", "If_3/then_branch/Relu_0"]
    everything = [n.name for n in first.graph.node] + inner
    assert len(set(everything)) == len(everything) and all(everything)


def test_named_model_is_untouched() -> None:
    proto = M.conv_net()
    before = proto.SerializeToString()
    name_nodes(proto, "m")
    assert proto.SerializeToString() == before
