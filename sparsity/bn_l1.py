"""The sparse-training penalty: L1 on BatchNorm scales (network slimming, Liu et al. 2017).

The subgradient `sr * sign(gamma)` is added to each selected BatchNorm weight's gradient once per optimiser
step, right before `optimizer.step()` (after gradient accumulation, AMP unscaling and the DDP all-reduce),
so the push towards zero does not depend on how many batches were accumulated or on the loss scale.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable

import torch
from torch import nn

SCHEDULES = ("constant", "linear", "ramp")
LAYER_CHOICES = ("all", "prunable")


def select_bns(
    model: nn.Module, layers: str = "all", prunable: Collection[str] | None = None
) -> list[nn.BatchNorm2d]:
    """The BatchNorm layers the penalty acts on: "all" (every BatchNorm2d; the Detect head has none), or
    "prunable": those named in `prunable`, the BatchNorms whose channels a zero gamma lets the pruner remove one
    by one. Only the prune stage's dependency graph knows which those are, so the caller passes them
    (prune.sparse_target.prunable_bn_names)."""
    if layers not in LAYER_CHOICES:
        raise ValueError(f"sparsity layers {layers!r} not understood; use one of {', '.join(LAYER_CHOICES)}")
    bns = [(n, m) for n, m in model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    if layers == "all":
        return [m for _, m in bns]
    if prunable is None:
        raise ValueError("sparsity layers 'prunable' needs the names of the prunable BatchNorms from the caller "
                         "(prune.sparse_target.prunable_bn_names)")
    keep = set(prunable)
    return [m for n, m in bns if n in keep]


def sr_at(sr: float, schedule: str, epoch: float, epochs: int) -> float:
    """Penalty strength at a (fractional) epoch: constant; linear decay from sr to 0 over the run; or ramp, a
    linear rise from 0 to sr, which lets a transferred model learn the new task before the push gets strong and
    ends with the strongest push on the channels that still resist (useful with targeted sparsity)."""
    if schedule == "constant":
        return sr
    if schedule == "linear":
        return sr * max(0.0, 1.0 - epoch / max(epochs, 1))
    if schedule == "ramp":
        return sr * min(1.0, epoch / max(epochs, 1))
    raise ValueError(f"sparsity schedule {schedule!r} not understood; use one of {', '.join(SCHEDULES)}")


@torch.no_grad()
def apply_bn_l1(model: nn.Module | None, sr: float, bns: Iterable[nn.BatchNorm2d] | None = None) -> None:
    """Add `sr * sign(gamma)` to the gradient of each BatchNorm weight (all of `model`'s when bns is None)."""
    if sr == 0:
        return
    if bns is None:
        if model is None:
            raise ValueError("apply_bn_l1 needs a model or a list of BatchNorms")
        bns = select_bns(model, "all")
    for bn in bns:
        w = bn.weight
        if w is None or not w.requires_grad:
            continue
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        w.grad.add_(torch.sign(w), alpha=sr)
