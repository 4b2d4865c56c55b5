"""Library entry points: build the graph, plan, apply, or all three at once; the structural moves (remove residual
blocks by measured importance, drop a detection scale) that return a new model and their table."""

from __future__ import annotations

import warnings

from torch import nn

from prune.apply import PruneWarning, apply_plan, recalibrate_bn
from prune.config import CALIB_NEEDED, PruneConfig, PruneError
from prune.depth import DepthTable, block_importance, depth_prune, remove_blocks, residual_blocks
from prune.graph import PruneGraph, build_graph
from prune.latency import prune_to_latency
from prune.plan import LatencyGoal, LatencyPredictor, PrunePlan, plan_pruning
from prune.runs import save_pruned
from prune.scales import ScaleTable, drop_scale, level_names
from prune.sweep import SweepResult, sweep
from prune.table import PruneTable


def prune_model(
    model: nn.Module, config: PruneConfig, calib_loader=None, graph: PruneGraph | None = None
) -> tuple[nn.Module, PruneTable]:
    """Plan and apply in one call; returns (pruned copy, prune table). The input model is not changed. A latency
    amount needs a predictor and a timer: prune_to_latency."""
    if config.wants_latency:
        raise PruneError(f"{config.amount[0]}: use prune_to_latency (it needs a latency predictor and a timer)")
    if config.needs_images and calib_loader is None:
        raise PruneError(CALIB_NEEDED)
    plan = plan_pruning(graph if graph is not None else model, config, calib_loader=calib_loader)
    for w in plan.warnings:
        warnings.warn(w, PruneWarning, stacklevel=2)
    pruned = apply_plan(model, plan, calib_loader=calib_loader)
    return pruned, plan.table


__all__ = [
    "PruneConfig", "PruneError", "PruneGraph", "PrunePlan", "PruneTable", "PruneWarning",
    "SweepResult",
    "apply_plan", "build_graph", "plan_pruning", "prune_model", "recalibrate_bn", "save_pruned", "sweep",
    "DepthTable", "ScaleTable", "block_importance", "depth_prune", "drop_scale", "level_names", "remove_blocks",
    "residual_blocks", "LatencyGoal", "LatencyPredictor", "prune_to_latency",
]  # fmt: skip
