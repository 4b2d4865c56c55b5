"""Reading images and turning them into network input for the ONNX side (parity, calibration, detect): numpy in,
numpy out, in the model's input convention (letterboxed RGB, or stretched BGR for the authors' YOLO-FastestV2).

The letterbox is the evaluator's own (`yolo.data.letterbox`), so exported models see what scoring feeds them.
`detect` asks for `opencv=True` instead: the image is resized as the official detect.py resizes it
(`cv2.resize(..., INTER_LINEAR)`, reproduced bit for bit by `resize_linear`), so its boxes are the official ones.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Union

import numpy as np
from PIL import Image, ImageOps

from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import InputConvention
from yolo.data import letterbox as yolo_letterbox
from yolo.data.resize import resize_linear
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


def letterbox(
    img: np.ndarray, new_shape: tuple[int, int], auto: bool = False, stride: int = 32, opencv: bool = False
):
    """Resize keeping the aspect ratio and pad to `new_shape` (h, w): returns (img, ratio, (dw, dh)).

    `opencv`: resize with `resize_linear` (as the official detect.py) instead of the evaluator's Pillow resize;
    the size, padding and rounding are the evaluator's (and the official letterbox's) either way.
    """
    if not opencv:
        return yolo_letterbox(img, new_shape, auto=auto, stride=stride)
    h0, w0 = img.shape[:2]
    r = min(new_shape[0] / h0, new_shape[1] / w0)
    size = (int(round(w0 * r)), int(round(h0 * r)))
    if size != (w0, h0):
        img = resize_linear(img, size)
    # already at its final size, which fits new_shape: scaleup=False makes the evaluator's letterbox only pad
    out, _, pad = yolo_letterbox(img, new_shape, auto=auto, scaleup=False, stride=stride)
    return out, (r, r), pad


def prepare(
    img: ImageLike,
    shape: int | Sequence[int],
    auto: bool = False,
    stride: int = 32,
    opencv: bool = False,
    convention: InputConvention = DEFAULT_CONVENTION,
):
    """Network input for one image, in the model's input `convention` (yolo.convention): the one place the
    exported-model paths (parity, calibration, detect, runtime checks) turn an image into a tensor.

    Returns (x float32 1x3xHxW in 0-1, original (h0, w0), ratio_pad for yolo.boxes.scale_boxes, the RGB original).
    Letterbox: with `auto` the padding is the minimum that makes each side a multiple of `stride` (dynamic
    models); `opencv` resizes as the official detect.py (see `letterbox`). Stretch: the whole image resized to
    `shape` with OpenCV's INTER_LINEAR, as the dataset stretches (`auto` and `opencv` do not apply).
    """
    rgb = as_rgb(img)
    h, w = to_shape(shape)
    if convention.stretch:
        lb = resize_linear(rgb, (w, h)) if rgb.shape[:2] != (h, w) else rgb
        ratio_pad = ((h / rgb.shape[0], w / rgb.shape[1]), (0.0, 0.0), "stretch")
    else:
        lb, ratio, pad = letterbox(rgb, (h, w), auto=auto, stride=stride, opencv=opencv)
        ratio_pad = (ratio, pad)
    lb = convention.channels_from_rgb(lb)
    x = np.ascontiguousarray(lb.transpose(2, 0, 1)[None], dtype=np.float32) / 255.0
    return x, rgb.shape[:2], ratio_pad, rgb


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
