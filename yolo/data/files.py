"""Which files are images, where an image's label file is, and the one error type of the data package."""

from __future__ import annotations

import os
from collections.abc import Iterable
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


def non_image_files(images: Iterable[Path]) -> list[Path]:
    """Files that sit in these images' folders but are not images (hidden files aside), sorted.

    Only folders whose labels live in a separate `labels/` tree are looked at: there every file should be an
    image, so a stray `notes.txt` or a label file copied to the wrong place is worth saying. Where the labels
    sit next to the images (no `/images/` in the path), `.txt` files are expected and nothing is reported.
    """
    folders = {img.parent for img in images if img2label_path(img).parent != img.parent}
    found = []
    for folder in folders:
        with os.scandir(folder) as entries:
            found += [
                Path(e.path)
                for e in entries
                if not e.name.startswith(".") and e.is_file() and not is_image(Path(e.name))
            ]
    return sorted(found, key=str)
