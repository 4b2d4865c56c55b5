"""Which files are images, where an image's label file is, and the one error type of the data package."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Union

PathLike = Union[str, Path]

IMG_FORMATS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


class DataError(ValueError):
    """Bad dataset input; the message is one line naming the file (and line) and what was expected."""


def is_image(p: Path) -> bool:
    """An image file by its suffix (the content is checked when the dataset is scanned)."""
    return p.suffix.lower() in IMG_FORMATS


def img2label_path(img: PathLike) -> Path:
    """YOLOv5's rule: the last `/images/` becomes `/labels/` and the suffix becomes `.txt`."""
    s = str(img)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        head, tail = s.rsplit(sa, 1)
        s = head + sb + tail
    return Path(s).with_suffix(".txt")
