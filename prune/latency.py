"""Prune to a latency budget measured on this machine: plan on predicted latency, slice, time, correct.

The plan's threshold search (prune.plan.Selector.k_for_latency) uses a latency predictor instead of FLOPs; the
predictor and the timer come from the caller (prune/ does not run exported models: reports.layer_latency builds
the table-backed predictor and times ONNX models; prune.py and pipeline/ hand both in, as `val` is handed its
exported-model loader). The prediction carries a model-wide error that a per-layer table cannot see (memory
traffic between layers, the runtime's fusions), so after each cut the real model is timed and the search is run
again with the goal scaled by predicted / measured, until the measured median is within `tolerance` of the budget
or `iterations` cuts were tried; the cut closest to the budget is kept.

With `moves=("width", "depth")` each search may also remove residual blocks (prune.latency_moves: a greedy
choice of the move with the least importance per predicted ms saved); the blocks it took are listed in the table's
`latency["depth_moves"]` and removed from the sliced model. Width only is the default, so a cut stays what the
global threshold alone makes of it unless depth moves are asked for.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from torch import nn

from prune.apply import PruneWarning, apply_plan
from prune.config import PruneConfig, PruneError
from prune.depth import remove_blocks
from prune.graph import PruneGraph, build_graph
from prune.importance import group_scores
from prune.latency_moves import DepthSearch, block_moves, depth_plan, exchange_rate, parse_moves
from prune.plan import LatencyGoal, LatencyPredictor, plan_pruning
from prune.structure_table import StructureTable
from prune.table import PruneTable

# name -> model in, name -> measured median ms out; the models are timed interleaved, on the caller's runtime
Measure = Callable[[Mapping[str, nn.Module]], dict[str, float]]
DEFAULT_TOLERANCE = 0.05
DEFAULT_ITERATIONS = 3


@dataclass
class _Cut:
    model: nn.Module
    table: PruneTable
    error: float  # |measured - budget| / budget


def prune_to_latency(
    model: nn.Module, config: PruneConfig, predictor: LatencyPredictor, measure: Measure, calib_loader=None,
    graph: PruneGraph | None = None, tolerance: float = DEFAULT_TOLERANCE, iterations: int = DEFAULT_ITERATIONS,
    log: Callable[[str], None] | None = None, moves: tuple[str, ...] = ("width",), images=None,
) -> tuple[nn.Module, PruneTable]:
    """Cut `model` to config.target_latency ms (or its measured median / config.target_speedup); returns (pruned
    copy, prune table with `latency` = budget, predicted and measured ms and each correction). An impossible budget
    (the narrowest model the floors allow is predicted slower) is a one-line PruneError before any slicing.
    `moves` ('width', 'depth'): depth lets the search remove residual blocks, measured on `images` (a loader or
    image tensors, as prune.depth.block_importance takes)."""
    config.validate()
    moves = parse_moves(moves, "moves")
    if not config.wants_latency:
        raise PruneError("prune_to_latency needs target_latency or target_speedup")
    if tolerance <= 0 or iterations < 1:
        raise PruneError(f"latency tolerance {tolerance} must be > 0 and iterations {iterations} >= 1")
    graph = graph if graph is not None else build_graph(model, config.imgsz, config.ignore)
    scores = group_scores(graph, config.importance, calib_loader)
    base_ms = measure({"baseline": model})["baseline"] if config.target_speedup else None
    budget = config.target_latency if base_ms is None else base_ms / config.target_speedup
    label = _label(config, budget, base_ms)
    search = _depth_search(model, graph, config, scores, LatencyGoal(predictor, budget, label), images,
                           calib_loader) if "depth" in moves else None  # fmt: skip
    goal, best, rounds = budget, None, []
    for i in range(iterations):
        try:
            plan, pruned = _cut(model, graph, config, scores, calib_loader, LatencyGoal(predictor, goal, label), search)
        except PruneError:
            if best is None:
                raise
            break  # the corrected goal fell below the floor: the closest cut so far stands
        timed = measure({"baseline": model, "pruned": pruned})
        pace = timed["baseline"] / (rounds[0]["baseline_ms"] if rounds else timed["baseline"])
        budget = budget_now(config, timed["baseline"], pace)
        predicted = plan.table.latency["predicted_ms"]
        rounds.append({"goal_ms": goal, "predicted_ms": predicted, "measured_ms": timed["pruned"],
                       "baseline_ms": timed["baseline"], "budget_ms": budget, "pace": pace})  # fmt: skip
        if log is not None:
            log(f"latency cut {i + 1}: goal {goal:.3f} ms, predicted {predicted:.3f}, measured {timed['pruned']:.3f} "
                f"(budget {budget:.3f}, baseline {timed['baseline']:.3f})")
        error = abs(timed["pruned"] - budget) / budget
        if best is None or error < best.error:
            best = _Cut(pruned, plan.table, error)
            for w in plan.warnings:
                warnings.warn(w, PruneWarning, stacklevel=2)
        if error <= tolerance:
            break
        goal = budget * predicted / timed["pruned"]
    assert best is not None
    best.table.latency.update(_record(best, rounds, tolerance), target_ms=config.target_latency)
    return best.model, best.table


def _depth_search(model, graph, config, scores, goal: LatencyGoal, images, calib_loader) -> DepthSearch:
    if images is None:
        raise PruneError("depth moves measure each block's importance on calibration images: give images (--data)")
    found = block_moves(graph, model, images, config.calib_images)
    rate = exchange_rate(model, graph, config, scores, goal, images, calib_loader, config.calib_images)
    return DepthSearch(graph, config, scores, goal.predictor, found, rate)


def _cut(model, graph, config, scores, calib_loader, goal: LatencyGoal, search: DepthSearch | None):
    """(plan, sliced model) for one goal; with depth moves the blocks the search took are removed after slicing."""
    if search is None:
        plan = plan_pruning(graph, config, scores, calib_loader, goal)
        return plan, apply_plan(model, plan, calib_loader=calib_loader)
    plan, taken = depth_plan(graph, config, scores, calib_loader, goal, search)
    pruned = apply_plan(model, plan, calib_loader=calib_loader)
    plan.table.latency["depth_rate"] = dict(search.rate, blocks=len(search.moves))
    if taken:
        pruned = remove_blocks(pruned, [m.block for m in taken])
        sizes = StructureTable.sizes(model, pruned, config.imgsz)
        plan.table.params_after, plan.table.gflops_after = sizes["params_after"], sizes["gflops_after"]
    return plan, pruned


def budget_now(config: PruneConfig, baseline_ms: float, pace: float) -> float:
    """This round's budget in ms. A speed-up's follows the baseline timed beside the cut. So does an absolute
    budget, from the first round's pace: a VM's speed drifts by several percent within minutes (the baseline
    moved 6.53 -> 6.73 -> 6.16 ms in three rounds of one run), and a cut timed during a fast minute would
    otherwise look under budget and steer the next goal the wrong way. `pace` = this round's baseline / the
    first round's."""
    if config.target_speedup:
        return baseline_ms / config.target_speedup
    return config.target_latency * pace


def _label(config: PruneConfig, budget: float, base_ms: float | None) -> str:
    if base_ms is None:
        return f"target_latency {budget:g} ms"
    return f"target_speedup {config.target_speedup:g} (budget {budget:.3g} ms = baseline {base_ms:.3g} ms / " \
           f"{config.target_speedup:g})"


def _record(best: _Cut, rounds: list[dict], tolerance: float) -> dict:
    """What the table and the run record keep: the chosen cut's budget, predicted and measured ms, every round."""
    chosen = min(rounds, key=lambda r: abs(r["measured_ms"] - r["budget_ms"]) / r["budget_ms"])
    return {
        "budget_ms": chosen["budget_ms"], "goal_ms": chosen["goal_ms"], "predicted_ms": chosen["predicted_ms"],
        "measured_ms": chosen["measured_ms"], "measured_before_ms": chosen["baseline_ms"],
        "error_pct": 100.0 * (chosen["measured_ms"] - chosen["budget_ms"]) / chosen["budget_ms"],
        "tolerance_pct": 100.0 * tolerance, "within_tolerance": bool(best.error <= tolerance), "iterations": rounds,
        "pace": chosen["pace"],
    }  # fmt: skip
