"""Benchmark cases: the FP32 model, calibration samples and held-out evaluation samples, as files."""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import onnx

from tools.bench.data import save_npz, seeded_normal

log = logging.getLogger(__name__)

DEFAULT_MODELS = ("mnist", "minilm", "resnet18_like", "mobilenetv2_like", "efficientnet_like",
                  "small_transformer")
MINILM_SEQ = 128
CALIB_SEED, EVAL_SEED = 1, 2

# (calibration samples, held-out samples) per kind, full / --quick.
SIZES = {
    "mnist": ((256, 1000), (64, 500)),
    "minilm": ((64, 128), (16, 32)),
    "random": ((256, 64), (32, 16)),
}


@dataclass(frozen=True)
class Case:
    name: str
    kind: str  # mnist | minilm | random
    fp32: str
    calib: str
    eval: str
    n_calib: int
    n_eval: int
    calib_data: str
    eval_data: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def prepare(name: str, workdir: Path, quick: bool, n_calib: int | None = None,
            zoo_dir: Path | None = None) -> Case:
    """Write (or reuse) the case's FP32 model and sample files under ``workdir/name``; zoo models are
    exported once into ``zoo_dir`` (default ``workdir/zoo``)."""
    kind = name if name in ("mnist", "minilm") else "random"
    calib_n, eval_n = SIZES[kind][1 if quick else 0]
    calib_n = n_calib or calib_n
    stem = Path(name).stem if name.endswith(".onnx") else name
    folder = workdir / stem
    folder.mkdir(parents=True, exist_ok=True)
    calib, held = folder / "calib.npz", folder / "eval.npz"
    if kind == "mnist":
        return _mnist(folder, calib, held, calib_n, eval_n)
    if kind == "minilm":
        return _minilm(folder, calib, held, calib_n, eval_n)
    return _random(name, stem, zoo_dir or workdir / "zoo", calib, held, calib_n, eval_n)


def _mnist(folder: Path, calib: Path, held: Path, n_calib: int, n_eval: int) -> Case:
    from dsqc.models.mnist import DEMO_MODEL_PATH, MNIST_INPUT_NAME, load_mnist

    x, _ = load_mnist("train")
    xt, yt = load_mnist("test")
    save_npz(calib, {MNIST_INPUT_NAME: x[:n_calib]})
    save_npz(held, {MNIST_INPUT_NAME: xt[:n_eval]}, yt[:n_eval])
    return Case("mnist", "mnist", str(DEMO_MODEL_PATH), str(calib), str(held), n_calib, n_eval,
                f"first {n_calib} real digits of the train split",
                f"{n_eval} real held-out test digits with labels")


def _minilm(folder: Path, calib: Path, held: Path, n_calib: int, n_eval: int) -> Case:
    from dsqc.models import minilm

    path = folder / f"minilm_seq{MINILM_SEQ}.onnx"
    if not path.exists():
        log.info("exporting MiniLM-L6 (real weights) to %s", path)
        minilm.export_minilm(path, MINILM_SEQ)
    texts = minilm.calibration_texts(n_calib + n_eval, seed=0)
    save_npz(calib, minilm.tokenize(texts[:n_calib], MINILM_SEQ))
    save_npz(held, minilm.tokenize(texts[n_calib:], MINILM_SEQ))
    return Case("minilm", "minilm", str(path), str(calib), str(held), n_calib, n_eval,
                f"{n_calib} real news sentences (lee_background.cor), seq {MINILM_SEQ}",
                f"{n_eval} other held-out sentences (SQNR over their non-padding tokens); "
                "Lee-50 and WordSim353 from gensim")


def _random(name: str, stem: str, zoo_dir: Path, calib: Path, held: Path, n_calib: int, n_eval: int) -> Case:
    if name.endswith(".onnx"):
        path = Path(name).resolve()
    else:
        from dsqc.models.export import zoo_model

        path = zoo_model(name, zoo_dir)
    shapes = input_shapes(onnx.load(str(path), load_external_data=False))
    save_npz(calib, seeded_normal(shapes, n_calib, CALIB_SEED))
    save_npz(held, seeded_normal(shapes, n_eval, EVAL_SEED))
    return Case(stem, "random", str(path), str(calib), str(held), n_calib, n_eval,
                f"{n_calib} seeded N(0,1) inputs (seed {CALIB_SEED}), same for every quantizer",
                f"{n_eval} other seeded N(0,1) inputs (seed {EVAL_SEED})")


def input_shapes(proto: onnx.ModelProto) -> dict[str, tuple[int, ...]]:
    """Per-sample shapes of float inputs; axis 0 is the batch, other dims must be static."""
    inits = {t.name for t in proto.graph.initializer}
    shapes = {}
    for vi in proto.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if tt.elem_type != onnx.TensorProto.FLOAT:
            raise ValueError(f"input {vi.name!r}: the random-input case feeds float32 only")
        dims = [d.dim_value if d.HasField("dim_value") else 0 for d in tt.shape.dim][1:]
        if any(d <= 0 for d in dims):
            raise ValueError(f"input {vi.name!r}: non-batch dims must be static, got {dims}")
        shapes[vi.name] = tuple(dims)
    return shapes

