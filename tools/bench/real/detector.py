"""NudeNet's ``320n.onnx`` (a YOLOv8n detector with real weights, from the ``nudenet`` wheel) on real photos
letterboxed to 320: photo crops (people in the astronaut and camera photos) and 2×2 mosaics of
real LFW faces."""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import numpy as np
import onnx

from tools.bench.real import photos
from tools.bench.real.store import save_case

log = logging.getLogger(__name__)
SIZE = 320


def nudenet_model(pydeps: Path | None) -> Path:
    """Path of ``nudenet/320n.onnx`` (installed, or unpacked under ``pydeps``)."""
    if pydeps is not None and (pydeps / "nudenet" / "320n.onnx").exists():
        return pydeps / "nudenet" / "320n.onnx"
    import importlib.util

    spec = importlib.util.find_spec("nudenet")
    if spec is None or spec.origin is None:
        raise FileNotFoundError("nudenet is not installed: pip download --no-deps nudenet, unzip into pydeps")
    return Path(spec.origin).parent / "320n.onnx"


def fixed_size(src: Path, dest: Path) -> Path:
    """The detector with its spatial input dims fixed to 320 (batch stays dynamic) and shapes inferred."""
    model = onnx.load(str(src))
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_value = SIZE
    dims[3].dim_value = SIZE
    out_dims = model.graph.output[0].type.tensor_type.shape.dim
    out_dims[2].Clear()
    out_dims[2].dim_value = sum((SIZE // stride) ** 2 for stride in (8, 16, 32))  # 2100 anchors
    onnx.save(onnx.shape_inference.infer_shapes(model), str(dest))
    return dest


def image_set(n_photos: int, n_faces: int, held_out: bool, seed: int) -> np.ndarray:
    """Letterboxed photo crops (random area 30–100 %, so aspect ratios vary) and face mosaics, NCHW [0, 1]."""
    rng = np.random.default_rng(seed)
    names = photos.HELD_OUT_PHOTOS if held_out else photos.CALIB_PHOTOS
    images = [
        photos.letterbox(photos.photo(names[i % len(names)]), SIZE)
        if i < len(names)
        else photos.letterbox(_crop(photos.photo(names[i % len(names)]), rng), SIZE)
        for i in range(n_photos)
    ]
    mosaics = photos.faces(n_faces, rng, held_out=held_out, size=SIZE)
    both = np.concatenate([np.stack(images), mosaics])
    return photos.to_nchw(both[rng.permutation(len(both))])  # mixed, so any first N hold both kinds


def _crop(img: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    h, w = img.shape[:2]
    ch, cw = int(h * rng.uniform(0.5, 1.0)), int(w * rng.uniform(0.5, 1.0))
    y, x = rng.integers(0, h - ch + 1), rng.integers(0, w - cw + 1)
    crop = img[y : y + ch, x : x + cw]
    return crop[:, ::-1] if rng.random() < 0.5 else crop


def prepare_detector(folder: Path, pydeps: Path | None, n_photos: int = 32, n_faces: int = 32) -> Path:
    calib = image_set(n_photos, n_faces, held_out=False, seed=30)
    held = image_set(n_photos, n_faces, held_out=True, seed=31)
    with tempfile.TemporaryDirectory() as tmp:
        path = fixed_size(nudenet_model(pydeps), Path(tmp) / "model.onnx")
        return save_case(
            "nudenet_320n",
            path,
            {"images": calib},
            {"images": held},
            {
                "kind": "detector",
                "source": "nudenet 3.4.2 320n.onnx (YOLOv8n, real weights, 18 classes), "
                "input dims fixed to 320x320, "
                "dynamic batch; output0 [N, 22, 2100] = cx, cy, w, h (pixels) + 18 class scores",
                "inputs": "images: RGB in [0, 1] letterboxed to 320 "
                "(pad right/bottom, as nudenet does), NCHW: "
                f"{n_photos} skimage photo crops + {n_faces} 2x2 mosaics of real LFW faces "
                "in shuffled order (calibration: calibration photos, faces 0-49; "
                "held-out: other photos, faces 50-99)",
                "metric": "box agreement and mAP@0.5 vs FP32 boxes (score >= 0.25, class-wise NMS IoU 0.45)",
            },
            folder,
        )
