"""The input convention a model was trained with: how an image becomes its input tensor.

This project's own models see the image letterboxed (aspect kept, grey padding) in RGB order; the authors'
YOLO-FastestV2 saw it stretched to the square input size in BGR order (OpenCV). Feeding one the other's
input costs accuracy silently, so a checkpoint records its convention (`input: {resize, channels}`; absent =
this project's default) and every path that turns images into tensors reads it from there.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

RESIZES = ("letterbox", "stretch")
CHANNELS = ("rgb", "bgr")


@dataclass(frozen=True)
class InputConvention:
    """resize: 'letterbox' (aspect kept, padded) or 'stretch' (to the square input); channels: 'rgb' or 'bgr'."""

    resize: str = "letterbox"
    channels: str = "rgb"

    def __post_init__(self) -> None:
        if self.resize not in RESIZES or self.channels not in CHANNELS:
            raise ValueError(f"input convention {self.text}: expected resize {'/'.join(RESIZES)} and channels "
                             f"{'/'.join(CHANNELS)}")

    @property
    def text(self) -> str:
        return f"{self.resize}-{self.channels}"

    @property
    def stretch(self) -> bool:
        return self.resize == "stretch"

    def as_dict(self) -> dict[str, str]:
        return {"resize": self.resize, "channels": self.channels}

    def channels_from_rgb(self, img: np.ndarray) -> np.ndarray:
        """An HxWx3 RGB image in this convention's channel order (a view; no copy for RGB)."""
        return img[..., ::-1] if self.channels == "bgr" else img


DEFAULT = InputConvention()


def from_meta(meta: Any) -> InputConvention:
    """The convention a checkpoint's metadata records (`input`), the project's default when it records none."""
    rec = meta.get("input") if isinstance(meta, dict) else None
    if not rec:
        return DEFAULT
    return InputConvention(str(rec.get("resize", DEFAULT.resize)), str(rec.get("channels", DEFAULT.channels)))


def parse(text: str) -> InputConvention:
    """'stretch-bgr', 'letterbox-rgb', ... (also with ',' or '/') as a convention; ValueError naming the choices."""
    parts = text.replace(",", "-").replace("/", "-").lower().split("-")
    if len(parts) != 2:
        raise ValueError(f"input convention {text!r}: expected <{'|'.join(RESIZES)}>-<{'|'.join(CHANNELS)}>")
    return InputConvention(*parts)


def of(obj: Any) -> InputConvention:
    """The convention a model (also wrapped in DataParallel) or a predictor of an exported file carries; the
    project's default for one that carries none (an official YOLOv5 file)."""
    obj = getattr(obj, "module", obj) if not hasattr(obj, "input_convention") else obj
    conv = getattr(obj, "input_convention", DEFAULT)
    return conv if isinstance(conv, InputConvention) else DEFAULT
