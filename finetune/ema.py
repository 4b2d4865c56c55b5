"""Exponential moving average of model weights, as YOLOv5 keeps it.

The decay ramps up with the number of updates: d = decay * (1 - exp(-updates / tau)), so early averages
follow the model closely and later ones move slowly. Floating-point buffers (BatchNorm statistics) are
averaged too; integer buffers are copied.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from yolo.model import de_parallel


class ModelEMA:
    """EMA copy of a model (`.ema`, kept in eval mode and without gradients), updated after optimizer steps."""

    def __init__(self, model: nn.Module, decay: float = 0.9999, tau: float = 2000.0, updates: int = 0):
        self.ema = copy.deepcopy(de_parallel(model)).eval()
        self.ema.requires_grad_(False)
        self.updates = updates
        self.decay_max = decay
        self.tau = tau

    def decay(self) -> float:
        return self.decay_max * (1 - math.exp(-self.updates / self.tau))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        self.updates += 1
        d = self.decay()
        msd = de_parallel(model).state_dict()
        for k, v in self.ema.state_dict().items():
            if v.dtype.is_floating_point:
                v.mul_(d).add_(msd[k].detach().to(v.dtype), alpha=1 - d)
            else:
                v.copy_(msd[k])

    def update_attr(self, model: nn.Module, include: tuple[str, ...] = ("names", "yaml", "hyp")) -> None:
        """Copy plain attributes (class names, config) from the training model."""
        src = de_parallel(model)
        for k in include:
            if hasattr(src, k):
                setattr(self.ema, k, copy.deepcopy(getattr(src, k)))

    def state_dict(self) -> dict:
        return {"weights": self.ema.state_dict(), "updates": self.updates}

    def load_state_dict(self, state: dict) -> None:
        self.ema.load_state_dict(state["weights"])
        self.updates = int(state["updates"])
