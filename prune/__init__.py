"""Structured channel pruning of YOLOv5: dependency graph, global importance, compensation, physical slicing."""

from prune.api import (
    DepthTable,
    LatencyGoal,
    LatencyPredictor,
    PruneConfig,
    PruneError,
    PruneGraph,
    PrunePlan,
    PruneTable,
    PruneWarning,
    ScaleTable,
    SweepResult,
    apply_plan,
    block_importance,
    build_graph,
    depth_prune,
    drop_scale,
    level_names,
    plan_pruning,
    prune_model,
    prune_to_latency,
    recalibrate_bn,
    remove_blocks,
    residual_blocks,
    save_pruned,
    sweep,
)

__all__ = [
    "PruneConfig", "PruneError", "PruneGraph", "PrunePlan", "PruneTable", "PruneWarning",
    "SweepResult",
    "apply_plan", "build_graph", "plan_pruning", "prune_model", "recalibrate_bn", "save_pruned", "sweep",
    "DepthTable", "ScaleTable", "block_importance", "depth_prune", "drop_scale", "level_names", "remove_blocks",
    "residual_blocks", "LatencyGoal", "LatencyPredictor", "prune_to_latency",
]  # fmt: skip
