"""Detection data: data.yaml, YOLO label files, image loading, letterbox, augmentation and loaders.

Conventions (YOLOv5's, so its val/train logic ports unchanged):
- images are HxWx3 uint8 **RGB** numpy arrays (Pillow decodes RGB; no BGR anywhere);
- labels are (n, 5) float32 `cls xc yc w h`, normalised to the image they belong to;
- `DetectionDataset.shapes` holds each original image's size as **(w, h)** after EXIF rotation,
  while `batch_shapes` and letterbox `new_shape` are **(h, w)**, as in YOLOv5.

Bad input never crashes deep inside a worker: data.yaml problems raise `DataError` (one line naming the
file), bad label rows are skipped or clipped and listed in `LabelReport`, unreadable images are dropped
and recorded. Nothing is ever written next to the data (no `.cache` files).
"""

from __future__ import annotations

import glob
import math
import os
import signal
import struct
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch
import yaml
from PIL import Image, ImageOps
from torch.utils.data import DataLoader, Dataset
from torch.utils.data.distributed import DistributedSampler

from yolo.fileio import yaml_error_text

PathLike = Union[str, Path]

IMG_FORMATS = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")
PAD_COLOR = (114, 114, 114)
EDGE_TOLERANCE = 0.05  # how far (normalised) a box may overshoot the image edge and still be clipped
ROUNDING_TOLERANCE = 1e-5  # overshoot from rounding labels to 6 decimals: clipped without being reported
MIN_IMAGE_SIDE = 10  # YOLOv5 rejects images of 9 px or less
RECT_BATCHES = ("exact", "yolov5")  # scoring batches: one shape each, or YOLOv5's consecutive groups
CACHE_MODES = ("auto", "ram", "no")  # decoded, resized images kept in memory (never written to disk)
AUTO_CACHE_BYTES = 1 << 30  # 'auto' caches at most 1 GiB, and at most a quarter of the memory available
_EXIF_ORIENTATION = 0x0112
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, Image.DecompressionBombError)


class DataError(ValueError):
    """Bad dataset input; the message is one line naming the file (and line) and what was expected."""


# --------------------------------------------------------------------------------------------- data.yaml
@dataclass
class DataConfig:
    """A parsed data.yaml: the dataset root, resolved image lists per split and the class names."""

    yaml_path: Path
    root: Path
    train: list[Path]
    val: list[Path]
    names: list[str]
    test: list[Path] = field(default_factory=list)

    @property
    def nc(self) -> int:
        """Number of classes (always derived from `names`, so the two cannot disagree)."""
        return len(self.names)


def load_data_yaml(path: PathLike) -> DataConfig:
    """Read a YOLOv5 data.yaml and resolve every split to a sorted list of image files."""
    yaml_path = Path(os.path.abspath(Path(path).expanduser()))
    d = _read_yaml_mapping(yaml_path)
    root = _resolve_root(d.get("path"), yaml_path)
    names = _parse_names(d, yaml_path)
    splits = {}
    for key in ("train", "val"):
        if d.get(key) in (None, ""):
            raise DataError(f"{yaml_path}: missing '{key}' (expected a folder, a .txt list or a list of them)")
        splits[key] = _resolve_split(d[key], root, yaml_path, key)
    test = _resolve_split(d["test"], root, yaml_path, "test") if d.get("test") else []
    return DataConfig(yaml_path, root, splits["train"], splits["val"], names, test)


def _read_yaml_mapping(yaml_path: Path) -> dict:
    """Load the yaml file as a mapping, turning every failure into a one-line DataError."""
    if not yaml_path.is_file():
        raise DataError(f"{yaml_path}: data yaml not found")
    try:
        d = yaml.safe_load(yaml_path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        raise DataError(yaml_error_text(yaml_path, e)) from None
    except UnicodeDecodeError:
        raise DataError(f"{yaml_path}: not a UTF-8 text file") from None
    if not isinstance(d, dict):
        raise DataError(f"{yaml_path}: expected a mapping with path/train/val/names, got {type(d).__name__}")
    return d


def _resolve_root(path_value: Any, yaml_path: Path) -> Path:
    """`path:` is relative to the yaml's own folder (not the cwd), and defaults to that folder."""
    if path_value in (None, ""):
        return yaml_path.parent
    root = Path(str(path_value)).expanduser()
    if not root.is_absolute():
        root = yaml_path.parent / root
    root = Path(os.path.normpath(root))
    if not root.is_dir():
        raise DataError(f"{yaml_path}: path: dataset root {root} is not a folder")
    return root


def _parse_names(d: dict, yaml_path: Path) -> list[str]:
    """Accept names as a list or a {0: name, ...} dict; check it against nc when both are given."""
    names, nc = d.get("names"), d.get("nc")
    if names is None:
        if not isinstance(nc, int) or isinstance(nc, bool) or nc < 1:
            raise DataError(f"{yaml_path}: missing 'names' (a list or a {{0: name}} mapping)")
        names = [f"class{i}" for i in range(nc)]
    elif isinstance(names, dict):
        try:
            keys = sorted(int(k) for k in names)
        except (TypeError, ValueError):
            raise DataError(f"{yaml_path}: names: keys must be integers 0..n-1") from None
        if keys != list(range(len(keys))):
            raise DataError(f"{yaml_path}: names: keys must be 0..{len(keys) - 1} without gaps, got {keys}")
        names = [str(names[k] if k in names else names[str(k)]) for k in keys]
    elif isinstance(names, list):
        names = [str(n) for n in names]
    else:
        raise DataError(f"{yaml_path}: names: expected a list or a mapping, got {type(names).__name__}")
    if not names:
        raise DataError(f"{yaml_path}: names is empty")
    if nc is not None and nc != len(names):
        raise DataError(f"{yaml_path}: nc is {nc} but names lists {len(names)} classes")
    return names


def _resolve_split(entry: Any, root: Path, yaml_path: Path, key: str) -> list[Path]:
    """Expand one split (folder, .txt list, image, glob, or a list of these) to sorted image files."""
    entries = entry if isinstance(entry, list) else [entry]
    files: list[Path] = []
    for e in entries:
        if not isinstance(e, (str, Path)):
            raise DataError(f"{yaml_path}: {key}: expected a path, got {e!r}")
        p = Path(str(e)).expanduser()
        p = p if p.is_absolute() else root / p
        if "*" in str(e):
            files += [Path(f) for f in glob.glob(str(p), recursive=True) if _is_image(Path(f))]
        elif p.is_dir():
            files += _images_in_dir(p)
        elif p.is_file() and p.suffix.lower() == ".txt":
            files += _images_from_txt(p, root)
        elif p.is_file() and _is_image(p):
            files.append(p)
        else:
            raise DataError(f"{yaml_path}: {key}: {p} does not exist (expected a folder of images or a .txt list)")
    files = sorted({Path(os.path.normpath(f)) for f in files}, key=str)
    if not files:
        raise DataError(f"{yaml_path}: {key}: no images ({' '.join(IMG_FORMATS)}) found in {entry}")
    return files


def _is_image(p: Path) -> bool:
    return p.suffix.lower() in IMG_FORMATS


def _images_in_dir(folder: Path) -> list[Path]:
    """All images below a folder, recursively, as YOLOv5 globs `**/*.*`."""
    return [p for p in folder.rglob("*") if _is_image(p) and p.is_file()]


def _images_from_txt(txt: Path, root: Path) -> list[Path]:
    """Image paths listed one per line; './x' is relative to the list's folder, other relative paths to root."""
    out = []
    for lineno, line in enumerate(txt.read_text(encoding="utf-8").splitlines(), 1):
        s = line.strip()
        if not s:
            continue
        if s.startswith("./"):
            p = txt.parent / s[2:]
        else:
            p = Path(s).expanduser()
            p = p if p.is_absolute() else root / p
        if not _is_image(p):
            continue
        if not p.is_file():
            raise DataError(f"{txt}:{lineno}: listed image {p} does not exist")
        out.append(p)
    return out


def img2label_path(img: PathLike) -> Path:
    """YOLOv5's rule: the last `/images/` becomes `/labels/` and the suffix becomes `.txt`."""
    s = str(img)
    sa, sb = f"{os.sep}images{os.sep}", f"{os.sep}labels{os.sep}"
    if sa in s:
        head, tail = s.rsplit(sa, 1)
        s = head + sb + tail
    return Path(s).with_suffix(".txt")


# ------------------------------------------------------------------------------------------------ labels
@dataclass
class LabelIssue:
    """One label row that was skipped, clipped or dropped as a duplicate (line 0 = the whole file)."""

    file: Path
    line: int
    reason: str
    action: str = "skipped"  # skipped | clipped | duplicate | unreadable

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.action}: {self.reason}"


@dataclass
class LabelReport:
    """What parsing a dataset found, so a user sees bad labels instead of silently training on them."""

    prefix: str = ""
    images: int = 0
    boxes: int = 0
    clipped: int = 0
    skipped: int = 0
    duplicates: int = 0
    polygons: int = 0
    unreadable: int = 0
    missing: int = 0  # images without a label file: background images
    empty: int = 0  # images with an empty label file: background images too
    issues: list[LabelIssue] = field(default_factory=list)

    def summary(self) -> str:
        """One line for logs."""
        head = f"{self.prefix}: " if self.prefix else ""
        return (
            f"{head}{self.images} images, {self.boxes} boxes, {self.missing + self.empty} backgrounds "
            f"({self.missing} without label file), {self.clipped} boxes clipped, {self.skipped} rows skipped, "
            f"{self.duplicates} duplicates dropped, {self.polygons} polygons boxed, "
            f"{self.unreadable} unreadable images"
        )


class _RowError(ValueError):
    """A label row that cannot be used; the message is the reason."""


def read_label_file(path: PathLike, nc: int | None) -> tuple[np.ndarray, list[LabelIssue], dict[str, int]]:
    """Parse a YOLO label file, keeping every usable row and explaining every row that was changed or dropped.

    Returns (labels (n, 5) float32 `cls xc yc w h`, issues, counters with clipped/skipped/duplicates/polygons).
    `nc=None` only checks that classes are non-negative integers.
    """
    path = Path(path)
    counters = {"clipped": 0, "skipped": 0, "duplicates": 0, "polygons": 0}
    issues: list[LabelIssue] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        counters["skipped"] += 1
        issues.append(LabelIssue(path, 0, f"unreadable label file ({type(e).__name__})"))
        return np.zeros((0, 5), np.float32), issues, counters
    rows: list[np.ndarray] = []
    first_line: dict[tuple[float, ...], int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            key, row, overshoot = _parse_row(parts, nc)
        except _RowError as e:
            counters["skipped"] += 1
            issues.append(LabelIssue(path, lineno, str(e)))
            continue
        if key in first_line:
            counters["duplicates"] += 1
            issues.append(LabelIssue(path, lineno, f"exact duplicate of line {first_line[key]}", "duplicate"))
            continue
        first_line[key] = lineno
        counters["polygons"] += len(parts) > 5
        if overshoot > ROUNDING_TOLERANCE:
            counters["clipped"] += 1
            issues.append(LabelIssue(path, lineno, f"box overshoots the image edge by {overshoot:.3g}", "clipped"))
        rows.append(row)
    labels = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 5), np.float32)
    return labels, issues, counters


def _parse_row(parts: list[str], nc: int | None) -> tuple[tuple[float, ...], np.ndarray, float]:
    """One row -> (exact values for duplicate detection, clipped `cls xc yc w h`, overshoot beyond [0, 1])."""
    n = len(parts)
    if n != 5 and (n < 7 or n % 2 == 0):
        raise _RowError(f"wrong column count {n}: expected 5 (cls xc yc w h) or an odd count >= 7 (cls x1 y1 ...)")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not _is_float(p))
        raise _RowError(f"non-numeric value {bad!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise _RowError("non-numeric value (nan or inf)")
    c = vals[0]
    if not c.is_integer() or c < 0 or (nc is not None and c >= nc):
        raise _RowError(f"class {parts[0]} is not an integer in [0, {nc if nc is not None else 'inf'})")
    if n == 5:
        xc, yc, w, h = vals[1:]
        if w <= 0 or h <= 0:
            raise _RowError(f"zero or negative box size w={parts[3]} h={parts[4]}")
        x1, y1, x2, y2 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
    else:
        xs, ys = vals[1::2], vals[2::2]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    overshoot = max(0.0, -x1, -y1, x2 - 1, y2 - 1)
    if overshoot > EDGE_TOLERANCE:
        raise _RowError(
            f"box ({x1:.4g}, {y1:.4g}, {x2:.4g}, {y2:.4g}) is far outside the normalised image [0, 1] "
            f"(more than {EDGE_TOLERANCE} beyond the edge; pixel coordinates?)"
        )
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise _RowError("zero or negative box size after clipping to the image")
    row = np.array([c, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], np.float64)
    return tuple(vals), row, overshoot


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True


# ------------------------------------------------------------------------------------------------ images
def image_size(path: PathLike) -> tuple[int, int]:
    """(w, h) of an image as it will be loaded (EXIF rotation applied); DataError if it is not usable."""
    path = Path(path)
    if not _is_image(path):
        raise DataError(f"{path}: unsupported image format (expected one of {' '.join(IMG_FORMATS)})")
    try:
        with Image.open(path) as im:
            im.verify()
        with Image.open(path) as im:  # verify() leaves the file unusable, so read the header again
            w, h = im.size
            orientation = im.getexif().get(_EXIF_ORIENTATION, 1)
    except _PIL_ERRORS as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    if orientation in (5, 6, 7, 8):  # rotated 90 or 270 degrees
        w, h = h, w
    if min(w, h) < MIN_IMAGE_SIDE:
        raise DataError(f"{path}: image is {w}x{h}, expected at least {MIN_IMAGE_SIDE} px a side")
    return w, h


def load_image(path: PathLike, img_size: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Decode upright RGB and resize so the long side is `img_size`; returns (img, (h0, w0), (h, w))."""
    try:
        with Image.open(path) as im:
            im = ImageOps.exif_transpose(im).convert("RGB")
    except _PIL_ERRORS as e:
        raise DataError(f"{path}: unreadable image ({type(e).__name__}: {e})") from None
    w0, h0 = im.size
    r = img_size / max(h0, w0)
    if r != 1:
        im = im.resize((_scaled(w0, r), _scaled(h0, r)), Image.Resampling.BILINEAR)
    img = np.array(im, dtype=np.uint8)
    return img, (h0, w0), img.shape[:2]


def _scaled(side: int, r: float) -> int:
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


# ------------------------------------------------------------------------------------------ augmentation
def _xywhn2xyxy(x: np.ndarray, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    y = np.empty_like(x)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def _xyxy2xywhn(x: np.ndarray, w: int, h: int, eps: float = 1e-3) -> np.ndarray:
    """Pixel corners -> normalised centre/size, clipped just inside the image as YOLOv5 does."""
    x = x.copy()
    x[:, [0, 2]] = x[:, [0, 2]].clip(0, w - eps)
    x[:, [1, 3]] = x[:, [1, 3]].clip(0, h - eps)
    y = np.empty_like(x)
    y[:, 0] = (x[:, 0] + x[:, 2]) / 2 / w
    y[:, 1] = (x[:, 1] + x[:, 3]) / 2 / h
    y[:, 2] = (x[:, 2] - x[:, 0]) / w
    y[:, 3] = (x[:, 3] - x[:, 1]) / h
    return y


def box_candidates(
    box1: np.ndarray,
    box2: np.ndarray,
    wh_thr: float = 2,
    ar_thr: float = 100,
    area_thr: float = 0.1,
    eps: float = 1e-16,
) -> np.ndarray:
    """Keep warped boxes (box2, 4xn) that are still real objects: > wh_thr px, not slivers, >= area_thr kept."""
    w1, h1 = box1[2] - box1[0], box1[3] - box1[1]
    w2, h2 = box2[2] - box2[0], box2[3] - box2[1]
    ar = np.maximum(w2 / (h2 + eps), h2 / (w2 + eps))
    return (w2 > wh_thr) & (h2 > wh_thr) & (w2 * h2 / (w1 * h1 + eps) > area_thr) & (ar < ar_thr)


def _perspective_matrix(
    rng: np.random.Generator,
    in_hw: tuple[int, int],
    out_hw: tuple[int, int],
    degrees: float,
    translate: float,
    scale: float,
    shear: float,
    perspective: float,
) -> tuple[np.ndarray, float]:
    """YOLOv5's composition T @ S @ R @ P @ C (centre, perspective, rotate+scale, shear, translate)."""
    C = np.eye(3)
    C[0, 2], C[1, 2] = -in_hw[1] / 2, -in_hw[0] / 2
    P = np.eye(3)
    P[2, 0], P[2, 1] = rng.uniform(-perspective, perspective), rng.uniform(-perspective, perspective)
    a = math.radians(rng.uniform(-degrees, degrees))
    s = rng.uniform(1 - scale, 1 + scale)
    R = np.eye(3)
    R[:2, :2] = [[s * math.cos(a), s * math.sin(a)], [-s * math.sin(a), s * math.cos(a)]]
    S = np.eye(3)
    S[0, 1] = math.tan(math.radians(rng.uniform(-shear, shear)))
    S[1, 0] = math.tan(math.radians(rng.uniform(-shear, shear)))
    T = np.eye(3)
    T[0, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[1]
    T[1, 2] = rng.uniform(0.5 - translate, 0.5 + translate) * out_hw[0]
    return T @ S @ R @ P @ C, s


def _warp(img: np.ndarray, M: np.ndarray, out_hw: tuple[int, int], perspective: bool) -> np.ndarray:
    """Apply M (input -> output pixels) with Pillow, which wants the inverse map; grey fill like YOLOv5."""
    inv = np.linalg.inv(M)
    if perspective:
        method, data = Image.Transform.PERSPECTIVE, tuple((inv / inv[2, 2]).ravel()[:8])
    else:
        method, data = Image.Transform.AFFINE, tuple(inv[:2].ravel())
    out = Image.fromarray(img).transform(
        (out_hw[1], out_hw[0]), method, data=data, resample=Image.Resampling.BILINEAR, fillcolor=PAD_COLOR
    )
    return np.asarray(out)


def random_perspective(
    img: np.ndarray,
    targets: np.ndarray,
    rng: np.random.Generator,
    degrees: float = 0.0,
    translate: float = 0.0,
    scale: float = 0.0,
    shear: float = 0.0,
    perspective: float = 0.0,
    border: tuple[int, int] = (0, 0),
) -> tuple[np.ndarray, np.ndarray]:
    """Random affine/perspective warp of an image and its (n, 5) `cls x1 y1 x2 y2` pixel targets.

    A negative `border` crops (mosaic's 2s canvas back to s). Boxes are mapped by their 4 corners and
    dropped when the warp leaves too little of them (box_candidates).
    """
    out_hw = (img.shape[0] + border[0] * 2, img.shape[1] + border[1] * 2)
    M, s = _perspective_matrix(rng, img.shape[:2], out_hw, degrees, translate, scale, shear, perspective)
    if border[0] or border[1] or (np.eye(3) != M).any():
        img = _warp(img, M, out_hw, bool(perspective))
    n = len(targets)
    if not n:
        return img, targets
    xy = np.ones((n * 4, 3))
    xy[:, :2] = targets[:, [1, 2, 3, 4, 1, 4, 3, 2]].reshape(n * 4, 2)
    xy = xy @ M.T
    xy = (xy[:, :2] / xy[:, 2:3] if perspective else xy[:, :2]).reshape(n, 8)
    x, y = xy[:, [0, 2, 4, 6]], xy[:, [1, 3, 5, 7]]
    new = np.stack((x.min(1), y.min(1), x.max(1), y.max(1)), 1)
    new[:, [0, 2]] = new[:, [0, 2]].clip(0, out_hw[1])
    new[:, [1, 3]] = new[:, [1, 3]].clip(0, out_hw[0])
    keep = box_candidates(targets[:, 1:5].T * s, new.T)
    targets = targets[keep].copy()
    targets[:, 1:5] = new[keep]
    return img, targets


def augment_hsv(
    img: np.ndarray, rng: np.random.Generator, hgain: float = 0.0, sgain: float = 0.0, vgain: float = 0.0
) -> np.ndarray:
    """Random gains on hue, saturation and value via lookup tables (Pillow's HSV has hue in 0..255)."""
    if not (hgain or sgain or vgain):
        return img
    r = rng.uniform(-1, 1, 3) * np.array([hgain, sgain, vgain]) + 1
    x = np.arange(256, dtype=np.float64)
    luts = (
        (x * r[0] % 256).astype(np.uint8),
        np.clip(x * r[1], 0, 255).astype(np.uint8),
        np.clip(x * r[2], 0, 255).astype(np.uint8),
    )
    hsv = Image.fromarray(img).convert("HSV")
    bands = [b.point(lut.tolist()) for b, lut in zip(hsv.split(), luts)]
    return np.asarray(Image.merge("HSV", bands).convert("RGB"))


def mixup(
    img: np.ndarray, labels: np.ndarray, img2: np.ndarray, labels2: np.ndarray, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Blend two augmented samples (YOLOv5: beta(32, 32) ratio) and keep both label sets."""
    r = rng.beta(32.0, 32.0)
    img = (img.astype(np.float32) * r + img2.astype(np.float32) * (1 - r)).astype(np.uint8)
    return img, np.concatenate((labels, labels2), 0)


# ------------------------------------------------------------------------------------------------ dataset
@dataclass
class _Scan:
    """What checking one image and its label file found (computed in a thread at dataset init)."""

    size: tuple[int, int] | None
    error: str
    labels: np.ndarray
    issues: list[LabelIssue]
    counters: dict[str, int]
    label_state: str  # ok | missing | empty


def _scan_one(img: Path, nc: int | None) -> _Scan:
    empty = np.zeros((0, 5), np.float32)
    try:
        size = image_size(img)
    except DataError as e:
        return _Scan(None, str(e), empty, [], {}, "ok")
    lb_path = img2label_path(img)
    if not lb_path.is_file():
        return _Scan(size, "", empty, [], {}, "missing")
    labels, issues, counters = read_label_file(lb_path, nc)
    return _Scan(size, "", labels, issues, counters, "ok" if len(labels) else "empty")


class PackedImages:
    """Decoded images in one contiguous uint8 tensor, handed out as read-only numpy views.

    One buffer, not one array per image, so loader workers share it however they start: a forked worker shares
    its pages (no per-image object for reference counts to touch), and a spawned one (macOS, Windows) receives
    the tensor through torch's shared memory instead of a pickled copy per worker. Read-only, so no
    augmentation can edit the cached copy.
    """

    def __init__(self, images: Iterable[tuple[np.ndarray, tuple[int, int], tuple[int, int]]], nbytes: int) -> None:
        """Copy `images` (consumed one at a time, so decoded arrays are freed as they are packed) into a buffer
        of `nbytes`, their total size."""
        self.pixels = torch.empty(nbytes, dtype=torch.uint8)
        flat = self.pixels.numpy()
        self.shapes: list[tuple[int, ...]] = []
        self.sizes: list[tuple[tuple[int, int], tuple[int, int]]] = []
        offsets = [0]
        for img, hw0, hw in images:
            start, end = offsets[-1], offsets[-1] + img.size
            if end > nbytes:
                raise ValueError(f"images take more than the {nbytes} bytes reserved for them")
            flat[start:end] = img.reshape(-1)
            self.shapes.append(img.shape)
            self.sizes.append((hw0, hw))
            offsets.append(end)
        if offsets[-1] != nbytes:
            raise ValueError(f"images take {offsets[-1]} bytes, {nbytes} were reserved for them")
        self.offsets = np.asarray(offsets)

    def __len__(self) -> int:
        return len(self.shapes)

    def __getitem__(self, i: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        img = self.pixels[int(self.offsets[i]) : int(self.offsets[i + 1])].numpy().reshape(self.shapes[i])
        img.setflags(write=False)
        return img, *self.sizes[i]

    def __iter__(self) -> Iterator[tuple[np.ndarray, tuple[int, int], tuple[int, int]]]:
        return (self[i] for i in range(len(self)))

    def share(self) -> None:
        """Move the buffer to shared memory before loader workers start, where a failure can still be explained
        (a spawned worker would move it while unpickling, and die with a bare error when /dev/shm is full)."""
        try:
            self.pixels.share_memory_()
        except RuntimeError as e:
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise DataError(
                f"--cache ram: the {self.pixels.numel() / 2**20:.0f} MB image cache does not fit in shared memory "
                f"for the loader workers ({first}); use --workers 0, --cache no, or a larger /dev/shm"
            ) from None


class DetectionDataset(Dataset):
    """YOLO-format detection dataset with YOLOv5's letterbox, rectangular batches and training augmentation.

    `__getitem__` returns (uint8 3xHxW RGB tensor, float (n, 6) `[0, cls, xc, yc, w, h]` normalised to the
    returned image, path, ((h0, w0), ((h / h0, w / w0), (padw, padh)))) - what `scale_boxes` needs.
    `shapes` is (n, 2) original (w, h); `batch_shapes` is (nb, 2) (h, w). Set `mosaic = False` to stop mosaic
    (e.g. for the last epochs).
    """

    def __init__(
        self,
        image_files: Sequence[PathLike],
        img_size: int = 640,
        names: list[str] | None = None,
        augment: bool = False,
        hyp: dict | None = None,
        rect: bool = False,
        batch_size: int = 16,
        stride: int = 32,
        pad: float = 0.0,
        prefix: str = "",
        rect_batches: str = "yolov5",
        cache: str = "auto",
    ) -> None:
        if rect_batches not in RECT_BATCHES:
            raise ValueError(f"rect_batches: expected one of {', '.join(RECT_BATCHES)}, got {rect_batches!r}")
        if cache not in CACHE_MODES:
            raise ValueError(f"cache: expected one of {', '.join(CACHE_MODES)}, got {cache!r}")
        self.img_size = img_size
        self.names = list(names) if names is not None else None
        self.augment = augment
        self.hyp = dict(hyp or {})
        self.rect = rect
        self.stride = stride
        self.prefix = prefix
        self.mosaic = augment and not rect
        self.mosaic_border = (-img_size // 2, -img_size // 2)
        self._scan([Path(f) for f in image_files])
        self.n = len(self.im_files)
        self.indices = np.arange(self.n)
        self.batch = np.floor(np.arange(self.n) / batch_size).astype(int)
        self.batch_shapes = None
        if rect and rect_batches == "exact":
            self._make_exact_rect_shapes(batch_size, stride, pad)
        elif rect:
            self._make_rect_shapes(batch_size, stride, pad)
        self._cached: PackedImages | None = None
        if cache == "ram" or (cache == "auto" and self.cache_bytes() <= _auto_cache_limit()):
            self._fill_cache()

    def cache_bytes(self) -> int:
        """Memory the decoded images take at img_size (long side), as load_image returns them."""
        r = self.img_size / self.shapes.max(1)
        return int(sum(_scaled(int(w), k) * _scaled(int(h), k) * 3 for (w, h), k in zip(self.shapes, r)))

    def _fill_cache(self) -> None:
        """Decode every image once (a loader without workers otherwise decodes and resizes every image every
        epoch: 2.4x the batch time on helmets)."""
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            images = pool.map(lambda f: load_image(f, self.img_size), self.im_files)
            self._cached = PackedImages(images, self.cache_bytes())

    def image(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """load_image of image `index` at img_size, from memory when cached."""
        if self._cached is not None:
            return self._cached[index]
        return load_image(self.im_files[index], self.img_size)

    def _scan(self, files: list[Path]) -> None:
        """Check every image and parse every label once, keeping only readable images."""
        nc = len(self.names) if self.names is not None else None
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            scans = list(pool.map(lambda f: _scan_one(f, nc), files))
        rep = LabelReport(prefix=self.prefix)
        self.im_files, self.labels, shapes = [], [], []
        for f, sc in zip(files, scans):
            if sc.size is None:
                rep.unreadable += 1
                rep.issues.append(LabelIssue(f, 0, sc.error, "unreadable"))
                continue
            self.im_files.append(f)
            self.labels.append(sc.labels)
            shapes.append(sc.size)
            rep.issues += sc.issues
            for k, v in sc.counters.items():
                setattr(rep, k, getattr(rep, k) + v)
            rep.missing += sc.label_state == "missing"
            rep.empty += sc.label_state == "empty"
        rep.images, rep.boxes = len(self.im_files), sum(len(lb) for lb in self.labels)
        self.report = rep
        if not self.im_files:
            where = files[0].parent if files else "the image list"
            raise DataError(f"{where}: no readable images ({rep.unreadable} unreadable)")
        self.shapes = np.array(shapes, dtype=np.int64).reshape(-1, 2)
        self.label_files = [img2label_path(f) for f in self.im_files]

    def _make_rect_shapes(self, batch_size: int, stride: int, pad: float) -> None:
        """Sort by aspect ratio so each batch needs little padding, then size each batch like YOLOv5."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort()  # the default kind, as YOLOv5: tie order decides which batch an image lands in
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        ar = ar[order]
        nb = int(self.batch[-1]) + 1
        shapes = np.ones((nb, 2))
        for i in range(nb):
            ari = ar[self.batch == i]
            mini, maxi = ari.min(), ari.max()
            if maxi < 1:
                shapes[i] = [maxi, 1]
            elif mini > 1:
                shapes[i] = [1, 1 / mini]
        self.batch_shapes = np.ceil(shapes * self.img_size / stride + pad).astype(int) * stride

    def _make_exact_rect_shapes(self, batch_size: int, stride: int, pad: float) -> None:
        """Batch only images that share their own rectangle, so no image is padded more than at batch 1.

        YOLOv5's consecutive batches pad an image to the widest aspect ratio of its batch, which moves the
        score with the batch size (yolov5n on coco128: mAP50 0.534 at batch 1, 0.528 at 16). Here every batch
        holds images of one shape (at most `batch_size` of them), so any batch size scores as batch 1 does.
        """
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        own = np.ones((self.n, 2))
        own[ar < 1, 0] = ar[ar < 1]
        own[ar > 1, 1] = 1 / ar[ar > 1]
        own = np.ceil(own * self.img_size / stride + pad).astype(int) * stride
        order = np.lexsort((ar, own[:, 1], own[:, 0]))
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes, own = self.shapes[order], own[order]
        batch, shapes, start = np.zeros(self.n, dtype=int), [], 0
        while start < self.n:
            end = start + 1
            while end < self.n and end - start < batch_size and (own[end] == own[start]).all():
                end += 1
            batch[start:end] = len(shapes)
            shapes.append(own[start])
            start = end
        self.batch, self.batch_shapes = batch, np.array(shapes)

    def batch_indices(self) -> list[list[int]]:
        """Image indices of each batch, in order (for a batch sampler when batches differ in size)."""
        return [np.flatnonzero(self.batch == b).tolist() for b in range(int(self.batch[-1]) + 1)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple]:
        # Seeded from torch so DataLoader workers (seeded by the loader's generator) stay reproducible.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return self.get(index, rng)

    def get(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, str, tuple]:
        """`__getitem__` with an explicit random generator (tests and reproducible previews)."""
        hyp = self.hyp
        if self.mosaic and rng.random() < hyp.get("mosaic", 0.0):
            img, labels = self.load_mosaic(index, rng)
            if rng.random() < hyp.get("mixup", 0.0):
                img, labels = mixup(img, labels, *self.load_mosaic(int(rng.integers(self.n)), rng), rng)
            shapes = (img.shape[:2], ((1.0, 1.0), (0.0, 0.0)))  # a mosaic is its own original
        else:
            img, labels, shapes = self._load_letterboxed(index, rng)
        h, w = img.shape[:2]
        if len(labels):
            labels[:, 1:5] = _xyxy2xywhn(labels[:, 1:5], w, h)
        if self.augment:
            img, labels = self._photometric_and_flips(img, labels, rng)
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels.astype(np.float32))
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return chw, out, str(self.im_files[index]), shapes

    def _load_letterboxed(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple]:
        """Single image: resize, letterbox to the (batch) shape, optionally warp; labels as pixel xyxy."""
        img, (h0, w0), (h, w) = self.image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)
        shapes = ((h0, w0), ((h / h0, w / w0), pad))
        labels = self.labels[index].astype(np.float64)
        if len(labels):
            labels[:, 1:] = _xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, pad[0], pad[1])
        if self.augment:
            img, labels = self._geometric(img, labels, rng, (0, 0))
        return img, labels, shapes

    def _geometric(
        self, img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, border: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        hyp = self.hyp
        return random_perspective(
            img,
            labels,
            rng,
            degrees=hyp.get("degrees", 0.0),
            translate=hyp.get("translate", 0.0),
            scale=hyp.get("scale", 0.0),
            shear=hyp.get("shear", 0.0),
            perspective=hyp.get("perspective", 0.0),
            border=border,
        )

    def _photometric_and_flips(
        self, img: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """HSV jitter and flips on normalised labels (flipping just mirrors the centre)."""
        hyp = self.hyp
        img = augment_hsv(img, rng, hyp.get("hsv_h", 0.0), hyp.get("hsv_s", 0.0), hyp.get("hsv_v", 0.0))
        if rng.random() < hyp.get("flipud", 0.0):
            img = img[::-1]
            labels[:, 2] = 1 - labels[:, 2]
        if rng.random() < hyp.get("fliplr", 0.0):
            img = img[:, ::-1]
            labels[:, 1] = 1 - labels[:, 1]
        return img, labels

    def load_mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Four images around a random centre on a 2s canvas, then warped and cropped back to s x s."""
        s = self.img_size
        yc, xc = (int(rng.uniform(-b, 2 * s + b)) for b in self.mosaic_border)
        indices = [index] + [int(i) for i in rng.integers(0, self.n, 3)]
        rng.shuffle(indices)
        canvas = np.full((s * 2, s * 2, 3), PAD_COLOR[0], np.uint8)
        all_labels = []
        for i, idx in enumerate(indices):
            img, _, (h, w) = self.image(idx)
            (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) = _mosaic_tile(i, xc, yc, w, h, s)
            canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            labels = self.labels[idx].astype(np.float64)
            if len(labels):
                labels[:, 1:] = _xywhn2xyxy(labels[:, 1:], w, h, x1a - x1b, y1a - y1b)
            all_labels.append(labels)
        labels = np.concatenate(all_labels, 0)
        labels[:, 1:] = labels[:, 1:].clip(0, 2 * s)
        return self._geometric(canvas, labels, rng, self.mosaic_border)

    @staticmethod
    def collate_fn(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
        """Stack images and concatenate labels with the image's batch index in column 0.

        Images of different sizes (only possible when a sampler mixes rect batches) are padded bottom/right,
        which leaves `shapes` valid and only needs the normalised labels rescaled.
        """
        imgs, labels, paths, shapes = zip(*batch)
        H, W = max(im.shape[1] for im in imgs), max(im.shape[2] for im in imgs)
        out_imgs, out_labels = [], []
        for i, (im, lb) in enumerate(zip(imgs, labels)):
            lb = lb.clone()
            h, w = im.shape[1:]
            if (h, w) != (H, W):
                padded = torch.full((im.shape[0], H, W), PAD_COLOR[0], dtype=im.dtype)
                padded[:, :h, :w] = im
                im = padded
                lb[:, [2, 4]] *= w / W  # xc, w
                lb[:, [3, 5]] *= h / H  # yc, h
            lb[:, 0] = i
            out_imgs.append(im)
            out_labels.append(lb)
        return torch.stack(out_imgs, 0), torch.cat(out_labels, 0), paths, shapes


def _mosaic_tile(i: int, xc: int, yc: int, w: int, h: int, s: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Canvas region (a) and image region (b) for tile i: top-left, top-right, bottom-left, bottom-right."""
    if i == 0:
        a = (max(xc - w, 0), max(yc - h, 0), xc, yc)
        b = (w - (a[2] - a[0]), h - (a[3] - a[1]), w, h)
    elif i == 1:
        a = (xc, max(yc - h, 0), min(xc + w, s * 2), yc)
        b = (0, h - (a[3] - a[1]), min(w, a[2] - a[0]), h)
    elif i == 2:
        a = (max(xc - w, 0), yc, xc, min(s * 2, yc + h))
        b = (w - (a[2] - a[0]), 0, w, min(a[3] - a[1], h))
    else:
        a = (xc, yc, min(xc + w, s * 2), min(s * 2, yc + h))
        b = (0, 0, min(w, a[2] - a[0]), min(a[3] - a[1], h))
    return a, b


# --------------------------------------------------------------------------------------------- dataloader
def _auto_cache_limit() -> int:
    """AUTO_CACHE_BYTES, or a quarter of MemAvailable when that is less (0 where it cannot be read)."""
    try:
        with open("/proc/meminfo") as f:
            avail = next(int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:"))
    except (OSError, StopIteration, ValueError, IndexError):
        return 0
    return min(AUTO_CACHE_BYTES, avail // 4)


def create_dataloader(
    image_files: Sequence[PathLike],
    img_size: int,
    batch_size: int,
    stride: int = 32,
    names: list[str] | None = None,
    augment: bool = False,
    hyp: dict | None = None,
    rect: bool = False,
    pad: float = 0.0,
    workers: int = 2,
    shuffle: bool = False,
    rank: int = -1,
    world_size: int = 1,
    seed: int = 0,
    prefix: str = "",
    rect_batches: str = "yolov5",
    cache: str = "auto",
) -> tuple[DataLoader, DetectionDataset]:
    """Dataset + loader; DDP ranks get a DistributedSampler, rect batches are never shuffled.

    With DDP and rect, batch shapes are computed over groups of `batch_size * world_size` sorted images,
    so the interleaved sampler hands every rank images of the same group. `rect_batches="exact"` (one shape
    per batch, see `DetectionDataset._make_exact_rect_shapes`) is for a single process. `cache`: keep the decoded
    images in memory ('auto': for a loader without workers, when they fit AUTO_CACHE_BYTES and a quarter of the
    available memory).
    """
    if rank != -1:
        rect_batches = "yolov5"
    if rect and shuffle:
        shuffle = False  # rect batches are aspect-ratio sorted; shuffling would break their shapes
    if cache == "auto" and min(workers, os.cpu_count() or 1) > 0:
        cache = "no"  # workers already hide decoding: helmets fine-tune epochs ran ~8% slower with the cache
    group = batch_size * (world_size if rank != -1 and rect else 1)
    dataset = DetectionDataset(
        image_files,
        img_size,
        names=names,
        augment=augment,
        hyp=hyp,
        rect=rect,
        batch_size=group,
        stride=stride,
        pad=pad,
        prefix=prefix,
        rect_batches=rect_batches,
        cache=cache,
    )
    batch_size = max(1, min(batch_size, len(dataset)))
    workers = max(0, min(workers, os.cpu_count() or 1))
    if workers and dataset._cached is not None and worker_start_method() != "fork":
        dataset._cached.share()
    if rect and rect_batches == "exact":
        loader = DataLoader(
            dataset,
            batch_sampler=dataset.batch_indices(),
            num_workers=workers,
            collate_fn=DetectionDataset.collate_fn,
            persistent_workers=workers > 0,
            pin_memory=torch.cuda.is_available(),
            worker_init_fn=leave_stop_signals_to_main,
        )
        return loader, dataset
    sampler = None
    if rank != -1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed + 1_000_003 * max(rank, 0))
    loader = DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        num_workers=workers,
        collate_fn=DetectionDataset.collate_fn,
        generator=generator,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
        worker_init_fn=leave_stop_signals_to_main,
    )
    return loader, dataset


def worker_start_method() -> str:
    """How loader workers will start (fork, spawn or forkserver), without fixing the default as a side effect."""
    import multiprocessing

    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]


def leave_stop_signals_to_main(worker_id: int) -> None:
    """Loader workers ignore SIGTERM: a scheduler stops the whole process group, and a worker that died first
    would fail the main process's next batch before it could save its position; the main process stops them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
