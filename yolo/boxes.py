"""Box format conversions, IoU and the letterbox-to-original mapping used by validation.

Conventions follow YOLOv5: `xyxy` is (x1, y1, x2, y2) in pixels, `xywh` is (cx, cy, w, h), shapes are (h, w).
The conversions accept torch tensors or numpy arrays and never modify their input.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TypeVar, Union

import numpy as np
import torch

Array = TypeVar("Array", torch.Tensor, np.ndarray)
_Shape = Sequence[Union[int, float]]


def _copy(x: Array) -> Array:
    """Return an independent copy so callers' boxes stay untouched."""
    return x.clone() if isinstance(x, torch.Tensor) else np.array(x, copy=True)


def xywh2xyxy(x: Array) -> Array:
    """Convert centre/size boxes to corner boxes (NMS and IoU work on corners)."""
    y = _copy(x)
    half_w, half_h = x[..., 2] / 2, x[..., 3] / 2
    y[..., 0] = x[..., 0] - half_w
    y[..., 1] = x[..., 1] - half_h
    y[..., 2] = x[..., 0] + half_w
    y[..., 3] = x[..., 1] + half_h
    return y


def xyxy2xywh(x: Array) -> Array:
    """Convert corner boxes to centre/size boxes (the label and COCO-json layouts start from this)."""
    y = _copy(x)
    y[..., 0] = (x[..., 0] + x[..., 2]) / 2
    y[..., 1] = (x[..., 1] + x[..., 3]) / 2
    y[..., 2] = x[..., 2] - x[..., 0]
    y[..., 3] = x[..., 3] - x[..., 1]
    return y


def xywhn2xyxy(x: Array, w: float, h: float, padw: float = 0, padh: float = 0) -> Array:
    """Turn normalised YOLO labels into pixel corners of a (possibly padded) image."""
    y = _copy(x)
    y[..., 0] = w * (x[..., 0] - x[..., 2] / 2) + padw
    y[..., 1] = h * (x[..., 1] - x[..., 3] / 2) + padh
    y[..., 2] = w * (x[..., 0] + x[..., 2] / 2) + padw
    y[..., 3] = h * (x[..., 1] + x[..., 3] / 2) + padh
    return y


def box_iou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Pairwise IoU (N, M) of two xyxy sets; `eps` keeps degenerate boxes from dividing by zero."""
    lt = torch.max(box1[:, None, :2], box2[None, :, :2])
    rb = torch.min(box1[:, None, 2:4], box2[None, :, 2:4])
    inter = (rb - lt).clamp(min=0).prod(2)
    area1 = (box1[:, 2:4] - box1[:, :2]).prod(1)
    area2 = (box2[:, 2:4] - box2[:, :2]).prod(1)
    return inter / (area1[:, None] + area2[None, :] - inter + eps)


def clip_boxes(boxes: Array, shape: _Shape) -> Array:
    """Clamp xyxy boxes in place to an image of `shape` (h, w); returns the same object for chaining."""
    h, w = shape[0], shape[1]
    if isinstance(boxes, torch.Tensor):
        boxes[..., 0].clamp_(0, w)
        boxes[..., 1].clamp_(0, h)
        boxes[..., 2].clamp_(0, w)
        boxes[..., 3].clamp_(0, h)
    else:
        boxes[..., [0, 2]] = boxes[..., [0, 2]].clip(0, w)
        boxes[..., [1, 3]] = boxes[..., [1, 3]].clip(0, h)
    return boxes


def scale_boxes(
    img1_shape: _Shape,
    boxes: Array,
    img0_shape: _Shape,
    ratio_pad: Sequence | None = None,
) -> Array:
    """Map xyxy boxes in place from the letterboxed input (img1) back to the original image (img0).

    Without `ratio_pad` the letterbox is recomputed (centred, uniform gain); with it, the dataset's exact
    ((gain_h, gain_w), (padw, padh)) is used, as YOLOv5 does, so rectangular-batch padding is undone too; a third
    element "stretch" marks a stretched input (yolo.convention), undone with a gain per axis.
    """
    if ratio_pad is None:
        gain = min(img1_shape[0] / img0_shape[0], img1_shape[1] / img0_shape[1])
        padw = (img1_shape[1] - img0_shape[1] * gain) / 2
        padh = (img1_shape[0] - img0_shape[0] * gain) / 2
    elif len(ratio_pad) > 2 and ratio_pad[2] == "stretch":  # stretched input: a gain per axis, no padding
        boxes[..., [0, 2]] /= ratio_pad[0][1]
        boxes[..., [1, 3]] /= ratio_pad[0][0]
        return clip_boxes(boxes, img0_shape)
    else:
        gain = ratio_pad[0][0]
        padw, padh = ratio_pad[1][0], ratio_pad[1][1]
    boxes[..., [0, 2]] -= padw
    boxes[..., [1, 3]] -= padh
    boxes[..., :4] /= gain
    return clip_boxes(boxes, img0_shape)
