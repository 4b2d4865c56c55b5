"""Targeted sparse training: the L1 penalty acts only on the channels the pruner would remove at the target.

Plain network slimming pushes every gamma towards zero and lets the task loss hold up the ones that matter. On
a pretrained detector that is a knife edge: too weak a rate and almost nothing reaches zero in a short run, too
strong and the penalty flattens important channels as well (on the helmets data, SGD at sr 1e-2 left 0.15% of
the gammas below 1e-2 after 10 epochs; 5e-2 drove 68% below it and mAP50 to 0).

Here the prune plan itself chooses: at the start of every epoch, the same global ranking and FLOPs / params /
ratio target the prune stage will use (same graph, floors, rounding and protected groups) marks the channels
that would go now, and only their BatchNorm scales are pushed, in every BatchNorm of their coupled group. The
rest of the network trains as usual and takes over their work while they fade, so the cut at the end removes
channels that are already near zero. Re-selecting every epoch lets a channel that the data needs climb back
out of the cut set.

The choice is the pruner's (prune/sparse_target.py builds it; the trainer hands it to the callback): this
module only defines what it delivers (`TargetState`) and applies the push.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

TARGET_KEYS = ("flops", "params", "ratio")


def parse_target(spec: str) -> dict:
    """'flops=0.5' | 'params=0.4' | 'ratio=0.3' -> the PruneConfig fields of that amount."""
    key, sep, value = spec.partition("=")
    key = key.strip().lower()
    if not sep or key not in TARGET_KEYS:
        raise ValueError(f"--sparsity-target {spec!r}: expected flops=F, params=F (fraction KEPT) or ratio=R "
                         "(fraction of channels REMOVED)")
    try:
        amount = float(value)
    except ValueError:
        raise ValueError(f"--sparsity-target {spec!r}: {value!r} is not a number") from None
    return {"ratio": amount} if key == "ratio" else {f"target_{key}": amount}


@dataclass
class TargetState:
    """The current cut set: per BatchNorm name, a 0/1 mask of the channels being pushed."""

    masks: dict[str, torch.Tensor]
    channels: int  # channels in the cut set (group channels, not BatchNorm entries)
    max_gamma: float  # the largest |gamma| among them: near 0 means the cut will be (almost) free

    def state_dict(self) -> dict:
        return {"masks": {k: v.detach().cpu().clone() for k, v in self.masks.items()}, "channels": self.channels,
                "max_gamma": self.max_gamma}

    @classmethod
    def from_state_dict(cls, state: dict) -> TargetState:
        return cls(dict(state["masks"]), int(state["channels"]), float(state["max_gamma"]))


class Selection(Protocol):
    """Chooses the cut set on the live model; the prune stage provides one (prune.sparse_target.TargetedSelection),
    built by the caller, since which channels a prune would remove is the pruner's knowledge, not this stage's."""

    def select(self, model: nn.Module) -> TargetState: ...


@torch.no_grad()
def apply_targeted_l1(model: nn.Module, sr: float, masks: dict[str, torch.Tensor]) -> None:
    """Add `sr * sign(gamma)` to the gradient of the masked BatchNorm channels only."""
    if sr == 0:
        return
    for name, mask in masks.items():
        w = model.get_submodule(name).weight
        if w is None or not w.requires_grad:
            continue
        if w.grad is None:
            w.grad = torch.zeros_like(w)
        w.grad.add_(torch.sign(w) * mask.to(w.device, w.dtype), alpha=sr)
