"""Optimiser, learning-rate schedule, warm-up and gradient accumulation, YOLOv5 style.

Three parameter groups, each tagged with a `name`:
  "bias"   every bias, no weight decay (its warm-up lr falls from warmup_bias_lr to the schedule),
  "decay"  convolution / linear weights, weight decay,
  "bn"     normalisation weights (BatchNorm gamma), no weight decay.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

OPTIMIZERS = ("SGD", "AdamW")


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Split trainable parameters into bias / decay / bn lists (each parameter once)."""
    groups: dict[str, list[nn.Parameter]] = {"bias": [], "decay": [], "bn": []}
    seen: set[int] = set()
    norm_types = tuple(v for k, v in vars(nn).items() if "Norm" in k and isinstance(v, type))
    for module in model.modules():
        for pname, p in module.named_parameters(recurse=False):
            if not p.requires_grad or id(p) in seen:
                continue
            seen.add(id(p))
            if pname == "bias":
                groups["bias"].append(p)
            elif isinstance(module, norm_types):
                groups["bn"].append(p)
            else:
                groups["decay"].append(p)
    return groups


def build_optimizer(
    model: nn.Module, name: str = "SGD", lr: float = 0.01, momentum: float = 0.937, decay: float = 5e-4
) -> torch.optim.Optimizer:
    """SGD (Nesterov) or AdamW over the three groups; weight decay on the "decay" group only."""
    g = param_groups(model)
    if name == "SGD":
        opt = torch.optim.SGD(g["bias"], lr=lr, momentum=momentum, nesterov=True)
    elif name == "AdamW":
        opt = torch.optim.AdamW(g["bias"], lr=lr, betas=(momentum, 0.999), weight_decay=0.0)
    else:
        raise ValueError(f"optimizer {name!r} not supported; use one of {', '.join(OPTIMIZERS)}")
    opt.param_groups[0]["name"] = "bias"
    opt.add_param_group({"params": g["decay"], "weight_decay": decay, "name": "decay"})
    opt.add_param_group({"params": g["bn"], "weight_decay": 0.0, "name": "bn"})
    for group in opt.param_groups:
        group["initial_lr"] = lr
    return opt


def lr_lambda(epochs: int, lrf: float, cos: bool = False, start: int = 0) -> Callable[[float], float]:
    """LR factor for an epoch: linear (1 - x/epochs)(1 - lrf) + lrf, or a cosine from 1 down to lrf.

    `start` shifts a run into a longer schedule: its epoch x gets the factor of the schedule's epoch start + x, so
    stages that share one schedule (sparse stage, then the fine-tune after the cut) do not each anneal and restart.
    """
    if cos:
        return lambda x: ((1 - math.cos((start + x) * math.pi / epochs)) / 2) * (lrf - 1) + 1
    return lambda x: (1 - (start + x) / epochs) * (1.0 - lrf) + lrf


def set_epoch_lr(optimizer: torch.optim.Optimizer, factor: float) -> None:
    """What YOLOv5's LambdaLR gives during an epoch: lr = initial_lr * lf(epoch)."""
    for group in optimizer.param_groups:
        group["lr"] = group["initial_lr"] * factor


def warmup_iters(warmup_epochs: float, iters_per_epoch: int) -> int:
    """Warm-up length: max(warmup_epochs * iterations per epoch, 100) iterations (0 if warmup_epochs is 0)."""
    if warmup_epochs <= 0:
        return 0
    return max(round(warmup_epochs * iters_per_epoch), 100)


def nominal_accumulate(nbs: int, batch_size: int) -> int:
    """Batches accumulated per optimiser step after warm-up: round(nbs / batch), at least 1."""
    return max(round(nbs / batch_size), 1)


def apply_warmup(
    optimizer: torch.optim.Optimizer,
    ni: int,
    nw: int,
    factor: float,
    hyp: dict,
    nbs: int,
    batch_size: int,
) -> int:
    """Set warm-up lr / momentum for integrated batch `ni` (< = nw); return the accumulation count.

    Bias lr falls from warmup_bias_lr to initial_lr * factor, the others rise from 0; momentum rises from
    warmup_momentum to momentum; accumulation ramps from 1 to nbs / batch_size (np.interp, as YOLOv5).
    """
    xi = [0, nw]
    accumulate = max(1, int(np.interp(ni, xi, [1, nbs / batch_size]).round()))
    for group in optimizer.param_groups:
        start = hyp["warmup_bias_lr"] if group.get("name") == "bias" else 0.0
        group["lr"] = float(np.interp(ni, xi, [start, group["initial_lr"] * factor]))
        if "momentum" in group:
            group["momentum"] = float(np.interp(ni, xi, [hyp["warmup_momentum"], hyp["momentum"]]))
    return accumulate


def clip_gradients(model: nn.Module, max_norm: float = 10.0) -> torch.Tensor:
    return torch.nn.utils.clip_grad_norm_(model.parameters(), max_norm=max_norm)
