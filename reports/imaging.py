"""Reading and letterboxing images for the ONNX side (parity, calibration, detect): numpy in, numpy out.

The letterbox is the evaluator's own (`yolo.data.letterbox`), so exported models see what scoring feeds them.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from yolo.data import letterbox
from yolo.imgsz import to_shape

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
ImageLike = Union[str, Path, np.ndarray]


def read_rgb(path: str | Path) -> np.ndarray:
    """An image file as an RGB uint8 HxWx3 array (EXIF orientation applied)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"image {path} not found")
    with Image.open(path) as im:
        im = ImageOps.exif_transpose(im)
        return np.asarray(im.convert("RGB")).copy()


def as_rgb(img: ImageLike) -> np.ndarray:
    """A path or an HxWx3 uint8 RGB array (HxW grey is widened) as an RGB uint8 array."""
    if isinstance(img, (str, Path)):
        return read_rgb(img)
    a = np.asarray(img)
    if a.ndim == 2:
        a = np.repeat(a[..., None], 3, axis=2)
    if a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected an HxWx3 RGB image, got shape {a.shape}")
    if a.dtype != np.uint8:
        a = np.clip(a, 0, 255).astype(np.uint8)
    return a


def prepare(img: ImageLike, shape: int | Sequence[int], auto: bool = False, stride: int = 32):
    """Letterboxed network input for one image.

    Returns (x float32 1x3xHxW in 0-1, original (h0, w0), ratio_pad ((r, r), (dw, dh)), the RGB original).
    With `auto` the padding is the minimum that makes each side a multiple of `stride` (dynamic models).
    """
    rgb = as_rgb(img)
    lb, ratio, pad = letterbox(rgb, to_shape(shape), auto=auto, stride=stride)
    x = np.ascontiguousarray(lb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    return x, rgb.shape[:2], (ratio, pad), rgb


def list_images(source: str | Path | Iterable[str | Path]) -> list[Path]:
    """A file, a folder (its images, sorted) or a list of files."""
    if not isinstance(source, (str, Path)):
        return [Path(p) for p in source]
    p = Path(source)
    if p.is_dir():
        files = sorted(f for f in p.iterdir() if f.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"no images ({', '.join(IMAGE_SUFFIXES)}) in folder {p}")
        return files
    if p.is_file():
        return [p]
    raise FileNotFoundError(f"image source {p} not found")
