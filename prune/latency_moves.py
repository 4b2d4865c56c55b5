"""Depth moves inside the latency search: remove a residual block when that costs less per millisecond than channels.

`--latency-moves width,depth`. The search is greedy: while the predicted latency is above the goal it takes the
cheapest of two kinds of move, each priced as (importance lost) / (predicted ms saved):

- a channel step: the global threshold moves on until the prediction drops by 1/STEPS of (full - goal); the price
  is the summed importance of the channels it passes (channels of blocks already removed are free and save nothing);
- a block removal (prune.depth): the saving is the predicted ms of the block's convs at the widths the search has
  reached; the price is the block's measured output change (block_importance) in channel-importance units.

Comparable units: channel scores (|gamma|, filter norms, Taylor terms) and a block's relative output change are not
the same quantity, so the block's change is converted at an exchange rate measured on this model: the width-only cut
for the goal is sliced once and its relative output change D (block_importance's formula) is measured on the same
calibration images, against the summed score S of the channels it removes. rate = S / D is how much channel
importance this model's cut spends per unit of output change, and a block costs d_b * rate. A block whose skipping
changes nothing (d_b = 0) is free; when the width cut changes nothing measurable (D = 0), every other block is
priced out. Ties go to channels, so a model without free blocks is cut as by width alone unless blocks are cheaper.

The search picks blocks only; the channel cut that goes with them is the plan's own bisection for the goal with the
blocks' convs counted as gone (a predictor view), so floors, rounding and the table's predicted ms behave as in a
width-only search. The blocks are removed after slicing (prune.depth.remove_blocks on the sliced model).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
from torch import nn

from prune.apply import apply_plan
from prune.config import PruneConfig, PruneError
from prune.depth import Block, block_importance, output_change, residual_blocks
from prune.graph import PruneGraph
from prune.plan import LatencyGoal, LatencyPredictor, Selector, plan_pruning

MOVES = ("width", "depth")
STEPS = 32  # channel steps between the full model and the goal: the granularity the blocks compete at


def parse_moves(text: str | Sequence[str], flag: str = "--latency-moves") -> tuple[str, ...]:
    """'width' or 'width,depth' -> ('width', 'depth'); width is always part of the search."""
    parts = [p.strip() for p in (text.split(",") if isinstance(text, str) else text) if p.strip()]
    bad = [p for p in parts if p not in MOVES]
    if bad or "width" not in parts:
        raise PruneError(f"{flag} {','.join(parts) or text!r}: expected width or width,depth")
    return tuple(m for m in MOVES if m in parts)


class Dropping:
    """A predictor view of the model with some convs gone (removed blocks): they cost 0 ms."""

    def __init__(self, predictor: LatencyPredictor, dropped: set[str]):
        self.predictor, self.dropped = predictor, set(dropped)

    def layer_ms(self, widths: Mapping[str, tuple[int, int]]) -> dict[str, float]:
        return {n: (0.0 if n in self.dropped else v) for n, v in self.predictor.layer_ms(widths).items()}

    def total_ms(self, widths: Mapping[str, tuple[int, int]]) -> float:
        if not self.dropped:
            return self.predictor.total_ms(widths)
        gone = sum(v for n, v in self.predictor.layer_ms(widths).items() if n in self.dropped)
        return self.predictor.total_ms(widths) - gone


@dataclass
class BlockMove:
    block: Block
    name: str  # model.4.m.1
    convs: tuple[str, ...]  # its convs in the prune graph
    groups: tuple[int, ...]  # graph groups produced only inside it (dead once it goes)
    importance: float  # relative output change when skipped
    price: float = math.nan  # importance in channel-score units (importance x exchange rate)
    ms_saved: float = math.nan  # predicted, when the search took it

    def as_dict(self) -> dict:
        return {"layer": self.block[0], "block": self.block[1], "name": self.name, "importance": float(self.importance),
                "price": float(self.price), "ms_saved": float(self.ms_saved)}  # fmt: skip


def block_moves(graph: PruneGraph, model: nn.Module, images, n_images: int = 64) -> list[BlockMove]:
    """Every removable residual block of `model` with its convs, the groups that die with it and its importance."""
    blocks = [(r.layer, r.block, r.name) for r in residual_blocks(model) if r.residual]
    if not blocks:
        return []
    scores = block_importance(model, images, [(i, j) for i, j, _ in blocks], n_images=n_images)
    moves = []
    for i, j, name in blocks:
        prefix = name + "."
        convs = tuple(n for n in graph.convs if n.startswith(prefix))
        dead = tuple(g.gid for g in graph.groups if g.producers and all(p.startswith(prefix) for p in g.producers))
        moves.append(BlockMove((i, j), name, convs, dead, float(scores[(i, j)])))
    return moves


def exchange_rate(model: nn.Module, graph: PruneGraph, config: PruneConfig, scores, goal: LatencyGoal, images,
                  calib_loader=None, n_images: int = 64) -> dict:
    """S / D of the width-only cut for the goal (the floor cut when the goal is below the width-only floor)."""
    try:
        ref = plan_pruning(graph, config, scores, calib_loader, goal)
    except PruneError:
        sel = Selector(graph, scores, config)
        floor = sel.predicted_ms(goal.predictor, sel.total) * (1 + 1e-9)
        ref = plan_pruning(graph, config, scores, calib_loader, LatencyGoal(goal.predictor, floor, goal.label))
    spent = float(sum(s[gp.removed].sum() for gp, s in zip(ref.groups, scores)))
    change = output_change(model, apply_plan(model, ref, calib_loader=calib_loader), images, n_images)
    rate = spent / change if change > 0 else math.inf
    return {"score_spent": spent, "output_change": change, "rate": rate}


def price(move: BlockMove, rate: float) -> float:
    return 0.0 if move.importance <= 0 else move.importance * rate


class DepthSearch:
    """The greedy choice of blocks for one goal (see the module docstring)."""

    def __init__(self, graph: PruneGraph, config: PruneConfig, scores, predictor: LatencyPredictor,
                 moves: list[BlockMove], rate: dict):
        self.sel = Selector(graph, scores, config)
        self.predictor, self.moves, self.rate = predictor, moves, rate  # rate: exchange_rate's record
        for m in moves:
            m.price = price(m, rate["rate"])
        sizes = self.sel.sizes
        self.owner = np.empty(self.sel.total, dtype=np.int64)  # sorted position -> group
        for g, pos in enumerate(self.sel.positions):
            self.owner[pos] = g
        self.n_groups = len(sizes)

    def predicted(self, k: int, taken: list[BlockMove]) -> float:
        view = Dropping(self.predictor, {c for m in taken for c in m.convs})
        return view.total_ms(self.sel.cost.widths(self.sel.sizes - self.sel.keeps(k)))

    def floor_ms(self) -> float:
        """The narrowest model the search can reach: every layer at its floor, every removable block gone."""
        return self.predicted(self.sel.total, self.moves)

    def _channel_step(self, k: int, taken: list[BlockMove], drop: float) -> tuple[int, float, float] | None:
        """(next k, price, ms saved) of the smallest threshold move saving >= drop ms (or reaching the end)."""
        now = self.predicted(k, taken)
        if k >= self.sel.total or self.predicted(self.sel.total, taken) >= now:
            return None
        lo, hi = k + 1, self.sel.total
        while lo < hi:
            mid = (lo + hi) // 2
            if self.predicted(mid, taken) <= now - drop:
                hi = mid
            else:
                lo = mid + 1
        saved = now - self.predicted(lo, taken)
        dead = np.zeros(self.n_groups, dtype=bool)
        dead[[g for m in taken for g in m.groups]] = True
        live = ~dead[self.owner[k:lo]]
        spent = float(self.sel.sorted_scores[k:lo][live].sum())
        return lo, spent / saved, saved

    def choose(self, goal: LatencyGoal) -> list[BlockMove]:
        """The blocks the greedy search removes on its way to goal.goal_ms (the channel cut is re-planned after)."""
        floor = self.floor_ms()
        if floor > goal.goal_ms:
            c = self.sel.config
            raise PruneError(f"{goal.label}: below the floor {floor:.3g} ms the layers can reach at min_keep "
                             f"{c.min_keep:g} (round_to {c.round_to}) with all {len(self.moves)} removable "
                             "residual blocks removed")  # fmt: skip
        k, taken = 0, []
        drop = max((self.predicted(0, []) - goal.goal_ms) / STEPS, 1e-9)
        while self.predicted(k, taken) > goal.goal_ms:
            step = self._channel_step(k, taken, drop)
            options = [] if step is None else [(step[1], 0, None, step[2])]  # (price per ms, width first, move, ms)
            layer_ms = self.predictor.layer_ms(self.sel.cost.widths(self.sel.sizes - self.sel.keeps(k)))
            for m in self.moves:
                saved = 0.0 if m in taken else float(sum(layer_ms.get(c, 0.0) for c in m.convs))
                if saved > 0:
                    options.append((m.price / saved, 1, m, saved))
            if not options:
                break  # nothing left to take (the floor check makes this unreachable above the goal)
            _, _, move, saved = min(options, key=lambda o: o[:2])
            if move is None:
                k = step[0]
            else:
                move.ms_saved = saved
                taken.append(move)
        return taken


def depth_plan(graph: PruneGraph, config: PruneConfig, scores, calib_loader, goal: LatencyGoal,
               search: DepthSearch):
    """(channel plan for the goal with the chosen blocks counted as gone, chosen blocks)."""
    taken = search.choose(goal)
    view = Dropping(goal.predictor, {c for m in taken for c in m.convs})
    plan = plan_pruning(graph, config, scores, calib_loader, LatencyGoal(view, goal.goal_ms, goal.label))
    _fix_before(plan, graph, search, goal.predictor)
    plan.table.latency["depth_moves"] = [m.as_dict() for m in taken]
    return plan, taken


def _fix_before(plan, graph: PruneGraph, search: DepthSearch, predictor: LatencyPredictor) -> None:
    """The 'before' columns describe the full model (the view counted the removed blocks as gone there too)."""
    full = search.sel.cost.widths(np.zeros(len(search.sel.sizes)))
    before = predictor.layer_ms(full)
    for row, g in zip(plan.table.rows, graph.groups):
        row.ms_before = float(sum(before[n] for n in g.producers if n in before))
    plan.table.latency["predicted_before_ms"] = predictor.total_ms(full)
