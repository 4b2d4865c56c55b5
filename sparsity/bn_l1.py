"""The sparse-training penalty: L1 on BatchNorm scales (network slimming, Liu et al. 2017).

The subgradient `sr * sign(gamma)` is added to each selected BatchNorm weight's gradient once per optimiser
step, right before `optimizer.step()` (after gradient accumulation, AMP unscaling and the DDP all-reduce),
so the push towards zero does not depend on how many batches were accumulated or on the loss scale.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import nn

SCHEDULES = ("constant", "linear", "ramp")
LAYER_CHOICES = ("all", "prunable")


def select_bns(model: nn.Module, layers: str = "all") -> list[nn.BatchNorm2d]:
    """The BatchNorm layers the penalty acts on.

    "all": every BatchNorm2d (the Detect head has none).
    "prunable": leaves out BatchNorms whose output channels feed a residual add (the second conv of a
    shortcut Bottleneck and the conv producing that Bottleneck's input), whose channels a pruner must keep
    coupled; the penalty then only pushes channels that can be removed one by one. Also left out: the last
    BatchNorm of each ShuffleNetV2 branch, whose channels cross the channel shuffle and are never pruned.
    """
    if layers not in LAYER_CHOICES:
        raise ValueError(f"sparsity layers {layers!r} not understood; use one of {', '.join(LAYER_CHOICES)}")
    bns = [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]
    if layers == "all":
        return bns
    coupled = {id(bn) for bn in residual_bns(model) + shuffle_bns(model)}
    return [bn for bn in bns if id(bn) not in coupled]


def residual_bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    """BatchNorms whose channels reach a residual add: in every C3 / BottleneckCSP with shortcut
    Bottlenecks, the block's cv1 (the input of the first add) and each Bottleneck's cv2."""
    out: list[nn.BatchNorm2d] = []
    for block in model.modules():
        bottlenecks = [b for b in getattr(block, "m", []) if getattr(b, "add", False)] if _is_csp(block) else []
        if not bottlenecks:
            continue
        out.append(block.cv1.bn)
        out.extend(b.cv2.bn for b in bottlenecks)
    return out


def shuffle_bns(model: nn.Module) -> list[nn.BatchNorm2d]:
    """The output BatchNorms of every ShuffleBlock branch (branch1.3, branch2.6): their channels go through the
    channel shuffle, which the pruner protects, so pushing their gammas to zero would only cost accuracy."""
    from yolo.shufflenet import ShuffleBlock

    out: list[nn.BatchNorm2d] = []
    for block in model.modules():
        if isinstance(block, ShuffleBlock):
            for seq in (getattr(block, "branch1", None), block.branch2):
                bns = [m for m in seq or () if isinstance(m, nn.BatchNorm2d)]
                out.extend(bns[-1:])
    return out


def _is_csp(block: nn.Module) -> bool:
    return isinstance(getattr(block, "m", None), nn.Sequential) and hasattr(block, "cv1")


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
