"""Image-folder samples: decoding (Pillow, imported lazily) and the preprocessing recipe."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import numpy as np

from dsqc.calibration.inputs import InputSpec
from dsqc.errors import CalibrationError, RecipeError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp")
_CHANNELS = {"RGB": 3, "BGR": 3, "L": 1}


@dataclass(frozen=True)
class ImagePreprocess:
    """Resize the shorter side to ``size``, center-crop ``crop``, scale, normalize per channel."""

    size: int = 224
    crop: int = 224
    mean: tuple[float, ...] = (0.485, 0.456, 0.406)
    std: tuple[float, ...] = (0.229, 0.224, 0.225)
    layout: str = "NCHW"
    scale: float = 1 / 255
    color: str = "RGB"

    def __post_init__(self) -> None:
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))
        if self.layout not in ("NCHW", "NHWC"):
            raise RecipeError(f"[calibration.image] layout must be 'NCHW' or 'NHWC', got {self.layout!r}")
        if self.color not in _CHANNELS:
            raise RecipeError(f"[calibration.image] color must be 'RGB', 'BGR' or 'L', got {self.color!r}")
        if not 0 < self.crop <= self.size:
            raise RecipeError(
                f"[calibration.image] needs 0 < crop <= size, got crop {self.crop}, size {self.size}")
        for key in ("mean", "std"):
            values = getattr(self, key)
            if len(values) not in (1, self.channels):
                raise RecipeError(
                    f"[calibration.image] {key} needs 1 or {self.channels} values for color "
                    f"{self.color!r}, got {len(values)}")
        if any(v == 0 for v in self.std):
            raise RecipeError("[calibration.image] std values must be non-zero")

    @property
    def channels(self) -> int:
        return _CHANNELS[self.color]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ImagePreprocess:
        """From a recipe's ``[calibration.image]`` table; an unknown key is a ``RecipeError``."""
        known = {f.name for f in fields(cls)}
        for key in d:
            if key not in known:
                raise RecipeError(
                    f"[calibration.image]: unknown key {key!r} (known: {', '.join(sorted(known))})")
        try:
            return cls(**d)
        except (TypeError, ValueError) as exc:
            raise RecipeError(f"[calibration.image]: {exc}") from None

    @classmethod
    def for_input(cls, spec: InputSpec) -> ImagePreprocess:
        """Defaults adapted to a model input's static spatial size and layout."""
        dims = spec.shape
        layout = "NHWC" if len(dims) == 4 and dims[3] in (1, 3) and dims[1] not in (1, 3) else "NCHW"
        h, w = (dims[1], dims[2]) if layout == "NHWC" else (dims[2], dims[3]) if len(dims) == 4 else (0, 0)
        side = h if isinstance(h, int) and h == w and h > 0 else 224
        channels = dims[3] if layout == "NHWC" else dims[1] if len(dims) == 4 else 3
        if channels == 1:
            raise CalibrationError(
                f"input {spec.name!r} takes 1-channel images: set [calibration.image] color = \"L\" "
                "with one mean and one std value")
        return cls(size=side, crop=side, layout=layout)

    def apply(self, image: Any) -> np.ndarray:
        """One PIL image → float32 ``[C, crop, crop]`` (NCHW) or ``[crop, crop, C]`` (NHWC)."""
        from PIL import Image

        img = image.convert("L" if self.color == "L" else "RGB")
        w, h = img.size
        s = self.size / min(w, h)
        nw, nh = max(self.crop, round(w * s)), max(self.crop, round(h * s))
        img = img.resize((nw, nh), Image.Resampling.BILINEAR)
        left, top = (nw - self.crop) // 2, (nh - self.crop) // 2
        img = img.crop((left, top, left + self.crop, top + self.crop))
        x = np.asarray(img, dtype=np.float32).reshape(self.crop, self.crop, -1)
        if self.color == "BGR":
            x = x[..., ::-1]
        mean = np.asarray(self.mean, dtype=np.float32)
        std = np.asarray(self.std, dtype=np.float32)
        x = (x * np.float32(self.scale) - mean) / std
        return np.ascontiguousarray(x.transpose(2, 0, 1) if self.layout == "NCHW" else x)


def list_images(folder: Path) -> tuple[list[Path], list[int] | None]:
    """Images directly in ``folder`` (no labels), else in class subfolders (label = sorted index)."""
    top = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
    if top:
        return top, None
    files: list[Path] = []
    labels: list[int] = []
    classes = sorted(p for p in folder.iterdir() if p.is_dir())
    for label, sub in enumerate(classes):
        found = sorted(p for p in sub.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
        files += found
        labels += [label] * len(found)
    return files, (labels if files else None)


def load_images(
    files: Sequence[Path], spec: InputSpec, preprocess: ImagePreprocess | None, where: str
) -> np.ndarray:
    """Decode and preprocess ``files`` into one ``[N, ...]`` float32 array for ``spec``."""
    try:
        from PIL import Image
    except ImportError:
        raise CalibrationError("image folders need Pillow: pip install pillow") from None
    pre = preprocess or ImagePreprocess.for_input(spec)
    out = []
    for path in files:
        try:
            with Image.open(path) as img:
                out.append(pre.apply(img))
        except (OSError, ValueError) as exc:
            raise CalibrationError(f"{where}: cannot read image {path.name}: {exc}") from None
    return np.stack(out).astype(np.float32, copy=False)
