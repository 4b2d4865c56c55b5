"""A seeded synthetic detection dataset: filled shapes on cluttered, noisy backgrounds.

It exists so tests and the demo can train and score a real detector in minutes on a CPU without any
download. The task is easy on purpose (distinct solid shapes, strong colour contrast) but not trivial:
backgrounds have gradients, texture and noise, and unlabelled clutter (thin lines, soft blobs) that
looks unlike the objects. Labels are the exact pixel extent of each drawn shape. A few images are 4:3 or
3:4 so rectangular batching is exercised. The same seed always writes the same bytes.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Union

import numpy as np
import yaml
from PIL import Image, ImageDraw

SYNTH_NAMES = ["circle", "square", "triangle"]
MAX_OVERLAP = 0.25  # at most this fraction of the smaller of two objects' boxes may be covered
_MIN_CONTRAST = 200  # summed |RGB| distance between an object and the background under it
_PREFIX = "synth_"

PathLike = Union[str, Path]


def make_synthetic_dataset(
    root: PathLike,
    n_train: int = 64,
    n_val: int = 16,
    img_size: int = 128,
    seed: int = 0,
    min_objects: int = 1,
    max_objects: int = 4,
    min_frac: float = 0.15,
    max_frac: float = 0.5,
) -> Path:
    """Write root/images/{train,val}, root/labels/{train,val} and root/data.yaml; return the yaml path.

    Object sizes are fractions of the image's short side. Files from an earlier call are replaced.
    """
    _check_args(n_train, n_val, img_size, min_objects, max_objects, min_frac, max_frac)
    root = Path(root)
    for split_id, (split, n) in enumerate((("train", n_train), ("val", n_val))):
        img_dir, lb_dir = root / "images" / split, root / "labels" / split
        _prepare_dir(img_dir, ".png")
        _prepare_dir(lb_dir, ".txt")
        for i in range(n):
            rng = np.random.default_rng([seed, split_id, i])
            img, labels = render_image(rng, img_size, min_objects, max_objects, min_frac, max_frac)
            stem = f"{_PREFIX}{split}_{i:05d}"
            Image.fromarray(img).save(img_dir / f"{stem}.png", format="PNG", compress_level=1)
            (lb_dir / f"{stem}.txt").write_text("".join(_label_line(lb) for lb in labels))
    data = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "nc": len(SYNTH_NAMES),
        "names": dict(enumerate(SYNTH_NAMES)),
    }
    yaml_path = root / "data.yaml"
    yaml_path.write_text(yaml.safe_dump(data, sort_keys=False))
    return yaml_path


def _check_args(
    n_train: int, n_val: int, img_size: int, min_objects: int, max_objects: int, min_frac: float, max_frac: float
) -> None:
    if n_train < 1 or n_val < 1:
        raise ValueError(f"n_train and n_val must be >= 1, got {n_train} and {n_val}")
    if img_size < 32:
        raise ValueError(f"img_size must be >= 32, got {img_size}")
    if not 0 <= min_objects <= max_objects:
        raise ValueError(f"need 0 <= min_objects <= max_objects, got {min_objects} and {max_objects}")
    if not 0 < min_frac <= max_frac <= 1:
        raise ValueError(f"need 0 < min_frac <= max_frac <= 1, got {min_frac} and {max_frac}")


def _prepare_dir(folder: Path, suffix: str) -> None:
    """Create the folder and remove files an earlier call wrote there (so counts never mix)."""
    folder.mkdir(parents=True, exist_ok=True)
    for f in folder.glob(f"{_PREFIX}*{suffix}"):
        f.unlink()


def _label_line(lb: tuple[int, float, float, float, float]) -> str:
    return f"{lb[0]} {lb[1]:.6f} {lb[2]:.6f} {lb[3]:.6f} {lb[4]:.6f}\n"


def render_image(
    rng: np.random.Generator,
    img_size: int,
    min_objects: int = 1,
    max_objects: int = 4,
    min_frac: float = 0.15,
    max_frac: float = 0.5,
) -> tuple[np.ndarray, list[tuple[int, float, float, float, float]]]:
    """One HxWx3 uint8 RGB image and its labels (cls, xc, yc, w, h normalised)."""
    w, h = _canvas_size(rng, img_size)
    bg = _background(rng, w, h)
    _add_blobs(rng, bg)
    im = Image.fromarray(np.clip(bg, 0, 255).astype(np.uint8))
    _add_lines(rng, im)
    labels = []
    boxes: list[tuple[int, int, int, int]] = []
    for _ in range(int(rng.integers(min_objects, max_objects + 1))):
        placed = _place_object(rng, im, bg, boxes, min_frac, max_frac)
        if placed is not None:
            cls, box = placed
            boxes.append(box)
            x0, y0, x1, y1 = box
            labels.append((cls, (x0 + x1) / 2 / w, (y0 + y1) / 2 / h, (x1 - x0) / w, (y1 - y0) / h))
    img = np.asarray(im).astype(np.float32) + rng.normal(0, 6, (h, w, 3)).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8), labels


def _canvas_size(rng: np.random.Generator, img_size: int) -> tuple[int, int]:
    """Mostly square, some 4:3 landscape and 3:4 portrait (w, h) so rect batches see several shapes."""
    u = rng.random()
    short = round(img_size * 3 / 4)
    if u < 0.6:
        return img_size, img_size
    return (img_size, short) if u < 0.8 else (short, img_size)


def _background(rng: np.random.Generator, w: int, h: int) -> np.ndarray:
    """A two-colour linear gradient plus low-frequency colour texture (float32 HxWx3)."""
    c0, c1 = rng.uniform(50, 200, 3), rng.uniform(50, 200, 3)
    a = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    t = xx * math.cos(a) / w + yy * math.sin(a) / h
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    coarse = rng.uniform(-25, 25, (4, 4, 3)).astype(np.float32)
    texture = np.stack(
        [np.asarray(Image.fromarray(coarse[..., k]).resize((w, h), Image.Resampling.BILINEAR)) for k in range(3)], -1
    )
    return (img + texture).astype(np.float32)


def _add_blobs(rng: np.random.Generator, bg: np.ndarray) -> None:
    """Unlabelled soft-edged blobs: they differ from objects by having no edge, so they are clutter."""
    h, w = bg.shape[:2]
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for _ in range(int(rng.integers(1, 4))):
        cx, cy = rng.uniform(0, w), rng.uniform(0, h)
        sigma = rng.uniform(0.05, 0.15) * min(w, h)
        alpha = 0.6 * np.exp(-((xx - cx) ** 2 + (yy - cy) ** 2) / (2 * sigma**2))
        bg += alpha[..., None] * (rng.uniform(0, 255, 3).astype(np.float32) - bg)


def _add_lines(rng: np.random.Generator, im: Image.Image) -> None:
    """Unlabelled thin lines and scribbles across the image."""
    w, h = im.size
    draw = ImageDraw.Draw(im)
    for _ in range(int(rng.integers(2, 6))):
        pts = [(float(rng.uniform(0, w)), float(rng.uniform(0, h))) for _ in range(int(rng.integers(2, 4)))]
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        draw.line(pts, fill=colour, width=int(rng.integers(1, 3)))


def _place_object(
    rng: np.random.Generator,
    im: Image.Image,
    bg: np.ndarray,
    boxes: list[tuple[int, int, int, int]],
    min_frac: float,
    max_frac: float,
) -> tuple[int, tuple[int, int, int, int]] | None:
    """Draw one shape where it overlaps earlier ones only a little; returns (cls, tight pixel box)."""
    w, h = im.size
    for _ in range(20):
        cls = int(rng.integers(len(SYNTH_NAMES)))
        size = rng.uniform(min_frac, max_frac) * min(w, h)
        cx, cy = rng.uniform(size / 2, w - size / 2), rng.uniform(size / 2, h - size / 2)
        mask = Image.new("L", (w, h), 0)
        _draw_shape(ImageDraw.Draw(mask), cls, cx, cy, size, rng)
        box = mask.getbbox()
        if box is None or any(_overlap(box, b) > MAX_OVERLAP for b in boxes):
            continue
        im.paste(_contrasting_colour(rng, bg, box), (0, 0), mask)
        return cls, box
    return None


def _draw_shape(
    draw: ImageDraw.ImageDraw, cls: int, cx: float, cy: float, size: float, rng: np.random.Generator
) -> None:
    """Fill one shape that fits in a size x size square centred at (cx, cy)."""
    r = size / 2
    if SYNTH_NAMES[cls] == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=255)
        return
    a = rng.uniform(0, 2 * math.pi)
    if SYNTH_NAMES[cls] == "square":
        a = rng.uniform(-math.pi / 12, math.pi / 12)  # mostly upright so squares never look like diamonds
        half = r / (abs(math.cos(a)) + abs(math.sin(a)))
        corners = [(-half, -half), (half, -half), (half, half), (-half, half)]
        pts = [(cx + x * math.cos(a) - y * math.sin(a), cy + x * math.sin(a) + y * math.cos(a)) for x, y in corners]
    else:
        pts = [
            (cx + r * math.cos(a + k * 2 * math.pi / 3), cy + r * math.sin(a + k * 2 * math.pi / 3)) for k in range(3)
        ]
    draw.polygon(pts, fill=255)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> float:
    """Intersection over the smaller box's area."""
    iw = min(a[2], b[2]) - max(a[0], b[0])
    ih = min(a[3], b[3]) - max(a[1], b[1])
    if iw <= 0 or ih <= 0:
        return 0.0
    smaller = min((a[2] - a[0]) * (a[3] - a[1]), (b[2] - b[0]) * (b[3] - b[1]))
    return iw * ih / max(smaller, 1)


def _contrasting_colour(rng: np.random.Generator, bg: np.ndarray, box: tuple[int, int, int, int]) -> tuple[int, ...]:
    """A random colour far from the background under the shape, so the object is always visible."""
    under = bg[box[1] : box[3], box[0] : box[2]].reshape(-1, 3).mean(0)
    best, best_d = None, -1.0
    for _ in range(16):
        c = rng.integers(0, 256, 3)
        d = float(np.abs(c - under).sum())
        if d > best_d:
            best, best_d = c, d
        if d >= _MIN_CONTRAST:
            break
    return tuple(int(v) for v in best)
