"""Model size as YOLOv5 reports it: parameter count and GFLOPs (2 FLOPs per multiply-accumulate)."""

from __future__ import annotations

import copy

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode


def count_params(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def count_gflops(model: nn.Module, imgsz: int | tuple[int, int] = 640, ch: int = 3) -> float:
    """GFLOPs of one forward at `imgsz` (square int or (h, w)).

    FlopCounterMode already counts a multiply-accumulate as 2 FLOPs, the convention YOLOv5 uses
    (thop MACs x 2), so the figure is not doubled again.
    """
    h, w = (imgsz, imgsz) if isinstance(imgsz, int) else imgsz
    m = copy.deepcopy(model).float().cpu().eval()
    p = next(m.parameters())
    x = torch.zeros(1, ch, h, w, dtype=p.dtype)
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        m(x)
    return counter.get_total_flops() / 1e9


def model_info(model: nn.Module, imgsz: int | tuple[int, int] = 640) -> dict:
    """Parameters, GFLOPs and layer count in one dict for tables and reports."""
    return {
        "params": count_params(model),
        "gflops": count_gflops(model, imgsz),
        "layers": sum(1 for _ in model.modules()),
        "imgsz": imgsz,
    }
