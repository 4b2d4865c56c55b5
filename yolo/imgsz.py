"""Image sizes and strides: one home for the (h, w) of a request, the model's largest stride and the check that
an image size fits it (pruning's FLOPs accounting rounds up as YOLOv5 does; an export refuses)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from yolo.modules import Detect


def to_shape(imgsz: int | Sequence[int]) -> tuple[int, int]:
    """An int or (h, w) / [h] as a (h, w) tuple."""
    if isinstance(imgsz, (int, np.integer)):
        return int(imgsz), int(imgsz)
    s = [int(v) for v in imgsz]
    if len(s) == 1:
        return s[0], s[0]
    if len(s) != 2:
        raise ValueError(f"image size must be one or two integers, got {list(imgsz)}")
    return s[0], s[1]


def max_stride(model: nn.Module) -> int:
    """The multiple an input side must be: the model's `input_stride` (its deepest downsampling, which exceeds
    Detect's largest stride once a P5 level was dropped), else its own `stride`, else its Detect head's; 32 when it
    has none."""
    model = model.module if hasattr(model, "module") else model
    if getattr(model, "input_stride", None):
        return int(model.input_stride)
    stride = getattr(model, "stride", None)
    if stride is None:
        det = next((m for m in model.modules() if isinstance(m, Detect) and m.stride is not None), None)
        stride = det.stride if det is not None else None
    return 32 if stride is None else int(torch.as_tensor(stride).max().item())


def check_imgsz(
    imgsz: int | Sequence[int],
    stride: int,
    round_up: bool = False,
    flag: str = "--imgsz",
    error: type[Exception] = ValueError,
) -> tuple[int, int]:
    """(h, w) of `imgsz` with each side a positive multiple of `stride`.

    round_up=True rounds each side up to the next multiple, as YOLOv5 does for a size that only counts FLOPs;
    round_up=False refuses a side that is not one (an export fixes the file's input size, so it must not differ
    from what was asked) by raising `error` with a one-line message naming `flag`.
    """
    try:
        h, w = to_shape(imgsz)
    except (TypeError, ValueError) as e:
        raise error(f"{flag}: {e}") from None
    if round_up:
        return -(-h // stride) * stride, -(-w // stride) * stride
    bad = [s for s in (h, w) if s <= 0 or s % stride]
    if bad:
        shown = " ".join(str(v) for v in ((h,) if h == w else (h, w)))
        raise error(
            f"{flag} {shown}: {bad[0]} is not a multiple of the model's max stride {stride} "
            f"(use e.g. {max(stride, round(bad[0] / stride) * stride)})"
        )
    return h, w
