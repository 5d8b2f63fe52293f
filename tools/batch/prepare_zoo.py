"""Models for the example fleet ``tools/batch/zoo_fleet.toml``: the zoo's CNNs and transformers exported to
``.cache/fleet/zoo/``, plus a corrupt file and a model with an op nobody implements (failures on purpose).

    .venv/bin/python -m tools.batch.prepare_zoo && .venv/bin/dsqc batch tools/batch/zoo_fleet.toml --jobs 2
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from dsqc.models.export import zoo_model

ZOO = ("resnet_block", "mobilenetv2_like", "resnet18_like", "tiny_transformer", "small_transformer")
FOLDER = Path(__file__).resolve().parents[2] / ".cache" / "fleet" / "zoo"


def custom_op_model() -> onnx.ModelProto:
    """Conv → ``com.acme::FancyGelu``: a valid ONNX file with an op from a domain nobody implements."""
    weight = np.random.default_rng(0).standard_normal((8, 3, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["input", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("FancyGelu", ["c"], ["output"], name="fancy_gelu", domain="com.acme")]
    graph = helper.make_graph(
        nodes, "custom_op", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, 16, 16])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 8, 16, 16])],
        [numpy_helper.from_array(weight, "w")])
    opsets = [helper.make_opsetid("", 17), helper.make_opsetid("com.acme", 1)]
    return helper.make_model(graph, opset_imports=opsets)


def main() -> None:
    FOLDER.mkdir(parents=True, exist_ok=True)
    for name in ZOO:
        print(zoo_model(name, FOLDER))
    corrupt = FOLDER / "corrupt.onnx"
    corrupt.write_bytes(np.random.default_rng(1).bytes(4096))  # not a protobuf: the build must say so
    onnx.save(custom_op_model(), str(FOLDER / "custom_op.onnx"))
    print(corrupt, FOLDER / "custom_op.onnx", sep="\n")


if __name__ == "__main__":
    main()
