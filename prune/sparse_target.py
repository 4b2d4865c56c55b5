"""What the sparse-training penalty should push, decided by the pruner: the prune side of sparse training.

The sparse stage (sparsity/) only applies an L1 push to the BatchNorm channels it is given; which channels those
are is a question about the prune dependency graph, so it is answered here and handed over by the caller (the
trainer), as Torch-Pruning's pruners own their regularisers. Two answers:

- `prunable_bn_names(model)`: the BatchNorms a gamma alone can empty (`--sparsity-layers prunable`);
- `TargetedSelection(model, config).select(model)`: the BatchNorm channels a prune to the target would remove
  now, re-planned on the live gammas (`--sparsity-target`; see sparsity/targeted.py for why).
"""

from __future__ import annotations

import torch
from torch import nn

from prune.config import PruneConfig
from prune.graph import build_graph, group_gamma
from prune.plan import plan_pruning
from sparsity.targeted import TargetState


def prunable_bn_names(model: nn.Module) -> set[str]:
    """BatchNorms whose channels the pruner can remove and whose gamma alone decides them: members of the
    dependency graph's prunable groups that one conv produces (a depthwise conv on the way passes them on).

    Left out, so the penalty only pushes channels that can go one by one: groups the pruner protects (channels
    crossing a ShuffleNetV2 channel shuffle, model outputs), and channels summed from several convs (residual
    adds of shortcut Bottlenecks, RepVGG's 3x3 + 1x1 branches), which a zero gamma in one BatchNorm does not empty.
    The prune stage's dependency graph decides (without --ignore), so this holds for any family it can trace.
    """
    graph = build_graph(model)
    keep: set[str] = set()
    for group in graph.groups:
        if sum(m.kind == "out" for m in group.members) == 1:
            keep.update(m.name for m in group.members if m.kind == "bn")
    return keep


class TargetedSelection:
    """Builds the prune graph once (the channel structure does not change while training) and re-plans on the
    live gammas whenever `select` is called. `prune_config` is a PruneConfig dict (ratio / target_flops /
    target_params, min_keep, round_to, ignore, imgsz); the importance is always the gammas ('slim'), since the
    penalty acts on them."""

    def __init__(self, model: nn.Module, prune_config: dict):
        fields = {k: v for k, v in prune_config.items() if k in PruneConfig.__dataclass_fields__}
        fields["ignore"] = tuple(fields.get("ignore", ()))
        fields["importance"] = "slim"  # the penalty acts on gammas, so the gammas must rank the channels
        self.config = PruneConfig(**fields).validate()
        self.graph = build_graph(model, self.config.imgsz, self.config.ignore)

    def select(self, model: nn.Module) -> TargetState:
        """The channels a prune of `model` as it is now would remove, as per-BatchNorm masks."""
        scores = [group_gamma(model, g) for g in self.graph.groups]  # the live gammas, not the traced copy's
        plan = plan_pruning(self.graph, self.config, scores=scores)
        masks: dict[str, torch.Tensor] = {}
        max_gamma = 0.0
        for gp, s in zip(plan.groups, scores):
            if len(gp.removed):
                max_gamma = max(max_gamma, float(s[gp.removed].max()))
            for m in gp.info.members:
                if m.kind != "bn":
                    continue
                bn = model.get_submodule(m.name)
                mask = masks.setdefault(m.name, torch.zeros_like(bn.weight, dtype=torch.float32))
                idx = gp.member_removed(m)
                if len(idx):
                    mask[torch.as_tensor(idx, device=mask.device)] = 1.0
        return TargetState(masks, plan.removed_channels, max_gamma)
