"""Training augmentation: random affine/perspective warps, HSV jitter, mixup and mosaic tiling.

Boxes travel as pixel `cls x1 y1 x2 y2` through the warps and become normalised `cls xc yc w h` at the end.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from yolo.data.images import PAD_COLOR


def xywhn2xyxy(x: np.ndarray, w: float, h: float, padw: float = 0.0, padh: float = 0.0) -> np.ndarray:
    """Normalised centre/size -> pixel corners of a w x h image placed at (padw, padh)."""
    y = np.empty_like(x)
    y[:, 0] = w * (x[:, 0] - x[:, 2] / 2) + padw
    y[:, 1] = h * (x[:, 1] - x[:, 3] / 2) + padh
    y[:, 2] = w * (x[:, 0] + x[:, 2] / 2) + padw
    y[:, 3] = h * (x[:, 1] + x[:, 3] / 2) + padh
    return y


def xyxy2xywhn(x: np.ndarray, w: int, h: int, eps: float = 1e-3) -> np.ndarray:
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


def mosaic_tile(i: int, xc: int, yc: int, w: int, h: int, s: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
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
