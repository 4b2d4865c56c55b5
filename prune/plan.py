"""Which channels go: one global order of all prunable channels by importance, cut by a ratio or a target.

The k least important channels (over all groups) are the candidates; each group then keeps at least its floor
(min_keep) and rounds what it keeps UP to a multiple of round_to (never above its size). For a FLOPs/params
target, k is found by bisection: the cost is monotone in k, rounding included, so the plan returned keeps the
largest cost that is still <= the target.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np
import torch
from torch import nn

from prune.config import PruneConfig, PruneError
from prune.cost import CostModel
from prune.graph import GroupInfo, Member, PruneGraph, Sink, build_graph
from prune.importance import group_scores
from prune.table import PruneRow, PruneTable


class LatencyPredictor(Protocol):
    """What the latency search needs from its caller (reports.layer_latency.TablePredictor is one): a model's
    predicted ms from its conv widths, {conv module name: (input channels, output channels)}."""

    def layer_ms(self, widths: Mapping[str, tuple[int, int]]) -> dict[str, float]: ...

    def total_ms(self, widths: Mapping[str, tuple[int, int]]) -> float: ...


@dataclass
class LatencyGoal:
    """A latency search: reach `goal_ms` predicted; `label` names the request in errors ('target_latency 12 ms')."""

    predictor: LatencyPredictor
    goal_ms: float
    label: str


@dataclass
class GroupPlan:
    info: GroupInfo
    keep: int
    removed: np.ndarray  # group channel indices removed (sorted)

    def member_removed(self, m: Member) -> np.ndarray:
        """Module-level channel indices of member `m` that go."""
        return np.sort(m.idxs[np.isin(m.root, self.removed)])


@dataclass
class PrunePlan:
    config: PruneConfig
    groups: list[GroupPlan]
    sinks: dict[str, Sink | None]
    shapes: dict[str, tuple[int, ...]]  # module name -> shape before pruning, to check the plan fits a model
    table: PruneTable
    in_ch: int = 3
    probe_size: int = 64
    warnings: list[str] = field(default_factory=list)

    @property
    def removed_channels(self) -> int:
        return int(sum(len(g.removed) for g in self.groups))


class Selector:
    """Global ordering of channels and the per-group keep counts for the first k of them."""

    def __init__(self, graph: PruneGraph, scores: list[np.ndarray], config: PruneConfig):
        self.graph, self.scores, self.config = graph, scores, config
        self.sizes = np.array([g.channels for g in graph.groups], dtype=np.int64)
        self.floors = np.array([config.floor(int(c)) for c in self.sizes], dtype=np.int64)
        flat = np.concatenate(scores) if scores else np.zeros(0)
        order = np.argsort(flat, kind="stable")
        rank = np.empty(len(flat), dtype=np.int64)
        rank[order] = np.arange(len(flat))
        self.sorted_scores = flat[order]
        bounds = np.cumsum(np.r_[0, self.sizes])
        self.positions = [np.sort(rank[bounds[i] : bounds[i + 1]]) for i in range(len(self.sizes))]
        self.total = len(flat)
        self.cost = CostModel(graph)

    def keeps(self, k: int) -> np.ndarray:
        """Channels kept per group when the k globally least important are candidates for removal."""
        raw = self.sizes - np.array([np.searchsorted(p, k) for p in self.positions], dtype=np.int64)
        keep = np.maximum(raw, self.floors)
        n = int(self.config.round_to)
        if n > 1:
            keep = np.minimum(self.sizes, -(-keep // n) * n)
        return keep

    def cost_at(self, k: int) -> tuple[float, float]:
        return self.cost.evaluate(self.sizes - self.keeps(k))

    def threshold(self, k: int) -> float:
        """Scores strictly below this are removed (ties broken by order): the score of the first channel kept."""
        if self.total == 0:
            return 0.0
        return float(self.sorted_scores[k]) if k < self.total else math.inf

    def k_for_ratio(self, ratio: float) -> int:
        return int(round(ratio * self.total))

    def k_for_target(self, metric: str, fraction: float) -> int:
        idx = 0 if metric == "flops" else 1
        base = self.cost.evaluate(np.zeros(len(self.sizes)))[idx]
        goal = fraction * base * (1 + 1e-9)
        floor_cost = self.cost_at(self.total)[idx]
        if floor_cost > goal:
            c = self.config
            raise PruneError(
                f"target_{metric} {fraction:g} cannot be met without emptying layers: with every prunable layer at "
                f"its floor (min_keep {c.min_keep:g}, round_to {c.round_to}) the model keeps "
                f"{floor_cost / base:.1%} of its {'FLOPs' if metric == 'flops' else 'parameters'}"
            )
        lo, hi = 0, self.total
        while lo < hi:
            mid = (lo + hi) // 2
            if self.cost_at(mid)[idx] <= goal:
                hi = mid
            else:
                lo = mid + 1
        return lo

    def predicted_ms(self, predictor: LatencyPredictor, k: int) -> float:
        return predictor.total_ms(self.cost.widths(self.sizes - self.keeps(k)))

    def k_for_latency(self, goal: LatencyGoal) -> int:
        """Fewest candidates whose plan is predicted to run within goal_ms (the predictor is monotone in widths and
        widths shrink with k, so bisection holds); one line naming the floor when even the narrowest model is not."""
        floor = self.predicted_ms(goal.predictor, self.total)
        if floor > goal.goal_ms:
            c = self.config
            raise PruneError(f"{goal.label}: below the floor {floor:.3g} ms the layers can reach at min_keep "
                             f"{c.min_keep:g} (round_to {c.round_to})")  # fmt: skip
        lo, hi = 0, self.total
        while lo < hi:
            mid = (lo + hi) // 2
            if self.predicted_ms(goal.predictor, mid) <= goal.goal_ms:
                hi = mid
            else:
                lo = mid + 1
        return lo


def plan_pruning(
    model: nn.Module | PruneGraph, config: PruneConfig, scores: list[np.ndarray] | None = None, calib_loader=None,
    latency: LatencyGoal | None = None,
) -> PrunePlan:
    """Decide which channels to remove. `model` may be a PruneGraph already built (see build_graph); the taylor
    importance reads labelled images from `calib_loader`. A latency amount needs `latency` (predictor and goal;
    prune.latency.prune_to_latency builds it and corrects the goal by timing the cut)."""
    amount, value = config.amount
    graph = model if isinstance(model, PruneGraph) else build_graph(model, config.imgsz, config.ignore)
    if tuple(config.ignore) != graph.ignore:
        raise PruneError(f"the graph was built with ignore={list(graph.ignore)}, the config says {list(config.ignore)}")
    if scores is None:
        scores = group_scores(graph, config.importance, calib_loader)
    sel = Selector(graph, scores, config)
    if amount == "ratio":
        k = sel.k_for_ratio(value)
    elif config.wants_latency:
        if latency is None:
            raise PruneError(f"{amount} needs a latency predictor and goal (prune.latency.prune_to_latency)")
        k = sel.k_for_latency(latency)
    else:
        k = sel.k_for_target("flops" if amount == "target_flops" else "params", value)
    return _make_plan(graph, sel, k, latency)


def _make_plan(graph: PruneGraph, sel: Selector, k: int, latency: LatencyGoal | None = None) -> PrunePlan:
    keep = sel.keeps(k)
    plans = []
    for g, s, kp in zip(graph.groups, sel.scores, keep):
        order = np.argsort(s, kind="stable")
        plans.append(GroupPlan(g, int(kp), np.sort(order[: g.channels - int(kp)])))
    flops, params = sel.cost.evaluate(sel.sizes - keep)
    table = _table(graph, sel, plans, k, flops, params)
    if latency is not None:
        _latency_columns(table, graph, sel, keep, latency)
    shapes = {n: (c.cout, c.cin, c.groups) for n, c in graph.convs.items()}
    shapes.update({n: (c,) for n, c in graph.bns.items()})
    plan = PrunePlan(sel.config, plans, dict(graph.sinks), shapes, table, graph.in_ch, graph.probe_size)
    plan.warnings = table.warnings
    return plan


def _table(graph: PruneGraph, sel: Selector, plans: list[GroupPlan], k: int, flops: float, params: float):
    rows = []
    for p, s in zip(plans, sel.scores):
        g = p.info
        kept = np.setdiff1d(np.arange(g.channels), p.removed)
        rows.append(
            PruneRow(
                layer=g.layer, name=g.name, type=g.ltype, coupled=len(g.producers), before=g.channels, after=p.keep,
                min_kept_gamma=float(g.gamma[kept].min()) if len(kept) else math.nan,
                max_removed_gamma=float(g.gamma[p.removed].max()) if len(p.removed) else math.nan,
                min_kept_score=float(s[kept].min()) if len(kept) else math.nan,
            )
        )
    c = sel.config
    table = PruneTable(
        rows=rows, importance=c.importance, threshold=sel.threshold(k), request=_request(c),
        params_before=int(graph.params), params_after=int(round(params)),
        gflops_before=graph.flops / 1e9, gflops_after=flops / 1e9, imgsz=graph.imgsz,
        protected=list(graph.protected), config=c.to_dict(),
    )
    table.warnings = _warnings(table, c)
    return table


def _latency_columns(table: PruneTable, graph: PruneGraph, sel: Selector, keep: np.ndarray, goal: LatencyGoal):
    """Each row's predicted ms before and after (its producing convs'), and the totals, from the predictor."""
    pred = goal.predictor
    before = pred.layer_ms(sel.cost.widths(np.zeros(len(sel.sizes))))
    after = pred.layer_ms(sel.cost.widths(sel.sizes - keep))
    for row, g in zip(table.rows, graph.groups):
        names = [n for n in g.producers if n in before]
        row.ms_before = float(sum(before[n] for n in names))
        row.ms_after = float(sum(after[n] for n in names))
    table.latency.update({
        "goal_ms": goal.goal_ms, "predicted_before_ms": pred.total_ms(sel.cost.widths(np.zeros(len(sel.sizes)))),
        "predicted_ms": pred.total_ms(sel.cost.widths(sel.sizes - keep)),
    })  # fmt: skip


def _request(c: PruneConfig) -> str:
    if c.ratio is not None:
        return f"ratio {c.ratio:g} (fraction of channels REMOVED)"
    if c.target_flops is not None:
        return f"target_flops {c.target_flops:g} (fraction of FLOPs KEPT)"
    if c.target_params is not None:
        return f"target_params {c.target_params:g} (fraction of parameters KEPT)"
    if c.target_latency is not None:
        return f"target_latency {c.target_latency:g} ms (measured ONNX Runtime median)"
    return f"target_speedup {c.target_speedup:g}x (baseline median / pruned median)"


def _warnings(table: PruneTable, c: PruneConfig) -> list[str]:
    worst = table.max_removed_gamma
    if not math.isnan(worst) and worst > c.warn_gamma:
        n = sum(1 for r in table.rows if not math.isnan(r.max_removed_gamma) and r.max_removed_gamma > c.warn_gamma)
        return [
            f"this plan removes channels whose BatchNorm |gamma| is far from zero (up to {worst:.3g} > warn_gamma "
            f"{c.warn_gamma:g}, in {n} layers): they carry real signal, so expect a clear mAP drop. Sparse-train "
            f"first (the sparsity stage, BN L1 penalty) until gammas collapse, and fine-tune after pruning"
            + ("." if c.reconstruct else "; --reconstruct N re-fits the layers after the cut to win part of it back.")
        ]
    return []


def removals(plan: PrunePlan) -> dict[tuple[str, str], np.ndarray]:
    """(module name, 'out' | 'in' | 'bn' | 'dw') -> module channel indices to remove (union over groups)."""
    acc: dict[tuple[str, str], list[np.ndarray]] = defaultdict(list)
    for gp in plan.groups:
        if len(gp.removed) == 0:
            continue
        for m in gp.info.members:
            acc[(m.name, m.kind)].append(gp.member_removed(m))
    return {k: np.unique(np.concatenate(v)) for k, v in acc.items()}


def kept_indices(n: int, removed) -> torch.Tensor:
    """0..n-1 without the `removed` indices (a tensor, for index_select)."""
    if removed is None or len(removed) == 0:
        return torch.arange(n)
    return torch.as_tensor(np.setdiff1d(np.arange(n), removed))
