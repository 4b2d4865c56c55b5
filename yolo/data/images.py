"""Reading images (upright RGB, long side resized) and YOLOv5's letterbox."""

from __future__ import annotations

import math
import os
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from yolo.data.files import IMG_FORMATS, DataError, PathLike, is_image
from yolo.data.resize import resize_linear

PAD_COLOR = (114, 114, 114)
MIN_IMAGE_SIDE = 10  # YOLOv5 rejects images of 9 px or less
_EXIF_ORIENTATION = 0x0112
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class UnusableImage(DataError):
    """An image file that cannot be used; `kind` is the short reason a data check counts it under."""

    def __init__(self, message: str, kind: str) -> None:
        super().__init__(message)
        self.kind = kind


def _unreadable(path: PathLike, e: BaseException) -> UnusableImage:
    """Pillow's error as `<path>: unreadable image (<what Pillow said, without the path>)`."""
    detail = " ".join(str(e).replace(repr(str(path)), "").split()) or type(e).__name__
    return UnusableImage(f"{path}: unreadable image ({detail})", detail.split(" (")[0].rstrip(":"))


def image_size(path: PathLike) -> tuple[int, int]:
    """(w, h) of an image as it will be loaded (EXIF rotation applied); `UnusableImage` (a DataError) if it is not
    usable: not an image suffix, not decodable, or under MIN_IMAGE_SIDE pixels a side."""
    path = Path(path)
    if not is_image(path):
        raise UnusableImage(
            f"{path}: unsupported image format (expected one of {' '.join(IMG_FORMATS)})", "unsupported format"
        )
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the file unusable, so read the header again
            w, h = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
            if im.format == "JPEG" and not _ends_with_jpeg_marker(path):
                im.load()  # verify() does not decode a JPEG: one cut short would only fail in the loader
    except _PIL_ERRORS as e:
        raise _unreadable(path, e) from None
    if orientation in (5, 6, 7, 8):  # rotated 90 or 270 degrees
        w, h = h, w
    if min(w, h) < MIN_IMAGE_SIDE:
        raise UnusableImage(
            f"{path}: image is {w}x{h}, expected at least {MIN_IMAGE_SIDE} px a side",
            f"smaller than {MIN_IMAGE_SIDE} px",
        )
    return w, h


def _ends_with_jpeg_marker(path: Path) -> bool:
    """A complete JPEG ends with the end-of-image marker FF D9 (checked before paying for a full decode)."""
    with open(path, "rb") as f:
        f.seek(-2, os.SEEK_END)
        return f.read() == b"\xff\xd9"


def load_image(
    path: PathLike, img_size: int, stretch: bool = False
) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Decode upright RGB and resize so the long side is `img_size` (`stretch`: both sides, in one resize from the
    original with OpenCV's INTER_LINEAR, as the stretch convention's models were fed); returns (img, (h0, w0),
    (h, w))."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except _PIL_ERRORS as e:
        raise _unreadable(path, e) from None
    w0, h0 = im.size
    r = img_size / max(h0, w0)
    if stretch:
        img = np.asarray(im, dtype=np.uint8)
        img = resize_linear(img, (img_size, img_size)) if (w0, h0) != (img_size, img_size) else img.copy()
        return img, (h0, w0), img.shape[:2]
    if r != 1:
        im = im.resize((scaled_side(w0, r), scaled_side(h0, r)), Image.Resampling.BILINEAR)
    img = np.array(im, dtype=np.uint8)
    return img, (h0, w0), img.shape[:2]


def scaled_side(side: int, r: float) -> int:
    """YOLOv5 rounds resized sides up; the epsilon stops float noise (160.00000001) adding a pixel."""
    return max(1, math.ceil(side * r - 1e-6))


def _resize(img: np.ndarray, size_wh: tuple[int, int]) -> np.ndarray:
    return np.asarray(Image.fromarray(img).resize(size_wh, Image.Resampling.BILINEAR))


def letterbox(
    img: np.ndarray,
    new_shape: int | Sequence[int] = 640,
    color: tuple[int, int, int] = PAD_COLOR,
    auto: bool = False,
    scaleup: bool = True,
    stride: int = 32,
) -> tuple[np.ndarray, tuple[float, float], tuple[float, float]]:
    """Resize keeping aspect ratio and pad centred to `new_shape` (h, w); returns (img, ratio (w, h), (dw, dh)).

    `auto` pads only to the next multiple of `stride`; `scaleup=False` never enlarges (keeps val honest).
    """
    shape = img.shape[:2]
    nh, nw = (int(new_shape), int(new_shape)) if np.isscalar(new_shape) else (int(new_shape[0]), int(new_shape[1]))
    r = min(nh / shape[0], nw / shape[1])
    if not scaleup:
        r = min(r, 1.0)
    uw, uh = int(round(shape[1] * r)), int(round(shape[0] * r))
    dw, dh = nw - uw, nh - uh
    if auto:
        dw, dh = dw % stride, dh % stride
    dw, dh = dw / 2, dh / 2
    if (shape[1], shape[0]) != (uw, uh):
        img = _resize(img, (uw, uh))
    top, bottom = int(round(dh - 0.1)), int(round(dh + 0.1))
    left, right = int(round(dw - 0.1)), int(round(dw + 0.1))
    out = np.empty((uh + top + bottom, uw + left + right) + img.shape[2:], np.uint8)
    out[...] = np.asarray(color, np.uint8)[: img.shape[2]] if img.ndim == 3 else color[0]
    out[top : top + uh, left : left + uw] = img
    return out, (r, r), (dw, dh)
