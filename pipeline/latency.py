"""Latency tools for the prune stage: the table-backed predictor and the ONNX Runtime timer it is handed.

prune/ may not import reports/ (import_rules.yaml), and reports/ does not know what a cut is; this module, allowed
both, joins them: the latency table (reports.layer_latency) is calibrated on the models a cut can produce (the
narrowest the floors allow and five cuts between) and handed to prune.latency.prune_to_latency with a timer.
`prune.py prune --target-latency` gets `latency_tools` as a default the dispatcher sets, as `val` gets its
exported-model loader. The pipeline checks a budget against the floor before its run folder exists
(`check_budget`) and cuts with `latency_cut`.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from prune.apply import apply_plan
from prune.config import PruneConfig, PruneError
from prune.depth import residual_blocks
from prune.graph import build_graph
from prune.importance import group_scores
from prune.latency import Measure, prune_to_latency
from prune.plan import LatencyGoal, Selector, plan_pruning
from prune.scales import drop_scale
from reports.layer_latency import LatencyTable, TablePredictor, check_prediction, load_or_profile, measure_models

FLOOR_RATIO = 1 - 1e-9  # every channel a candidate: each layer at its floor


def _quiet_plan(model: nn.Module, config: PruneConfig, scores=None) -> nn.Module:
    graph = build_graph(model, config.imgsz, config.ignore)
    return apply_plan(model, plan_pruning(graph, config, scores=scores))


def cut_config(config: PruneConfig, ratio: float) -> PruneConfig:
    """`config`'s floors, rounding and ignores at a plain ratio (compensation only: no images needed)."""
    d = {k: v for k, v in config.to_dict().items() if k not in ("target_latency", "target_speedup",
                                                                "target_flops", "target_params")}  # fmt: skip
    d.update(ratio=min(ratio, FLOOR_RATIO), compensate="beta" if config.compensate == "mean" else config.compensate,
             recalibrate=0, reconstruct=0, importance="l1" if config.importance == "taylor" else config.importance)
    return PruneConfig.from_dict(d)


CALIBRATION_SEED = 20261207  # the calibration's mixed cuts: never the seeds a check of the table draws from


def calibration_models(model: nn.Module, config: PruneConfig) -> dict[str, nn.Module]:
    """The whole models the table's rest is fitted on, spanning the widths a search visits: the narrowest model
    the floors allow, cuts at a quarter, half and three quarters of the channels by importance, and two cuts of
    random ratio and random importance (uneven widths, as a real plan makes). Six timings and the full model for
    three unknowns: each whole-model timing wanders a few % on a shared machine, and a fit through exactly three
    of them carries that noise into every prediction."""
    rng = np.random.default_rng(CALIBRATION_SEED)
    return {"floor": _quiet_plan(model, cut_config(config, FLOOR_RATIO)),
            **{name: _quiet_plan(model, cut_config(config, r)) for name, r in
               (("quarter", 0.25), ("half", 0.5), ("three_quarters", 0.75))},
            **{f"mixed{i + 1}": random_cut(model, config, rng) for i in range(2)}}  # fmt: skip


def random_cut(model: nn.Module, config: PruneConfig, rng: np.random.Generator) -> nn.Module:
    """A cut at a random ratio in [0.1, 0.8] with random importance: a width configuration no calibration saw."""
    cfg = cut_config(config, float(rng.uniform(0.1, 0.8)))
    graph = build_graph(model, cfg.imgsz, cfg.ignore)
    scores = [rng.random(g.channels) for g in graph.groups]
    return apply_plan(model, plan_pruning(graph, cfg, scores=scores))


def latency_table(
    model: nn.Module, config: PruneConfig, threads: int, path: str | Path | None = None,
    log: Callable[[str], None] = print, **kw: Any,
) -> tuple[LatencyTable, Path]:
    """The cached table for this model, machine and settings, or a new one (profiled and calibrated)."""
    return load_or_profile(model, config.imgsz, threads, config.round_to, path,
                           calibration=lambda: calibration_models(model, config), log=log, **kw)  # fmt: skip


def latency_tools(
    model: nn.Module, config: PruneConfig, threads: int = 1, path: str | Path | None = None,
    log: Callable[[str], None] = print, runs: int = 30,
) -> tuple[TablePredictor, Measure, dict]:
    """(predictor, timer, facts for the run record) for prune.latency.prune_to_latency."""
    table, where = latency_table(model, config, threads, path, log)
    measure = partial(measure_models, imgsz=config.imgsz, threads=threads, runs=runs)
    facts = {"table": str(where), "key": table.key, "level": table.level, "threads": threads, "runs": runs}
    return TablePredictor(table), measure, facts



def profile_and_check(
    model: nn.Module, config: PruneConfig, threads: int, path: str | Path | None = None, checks: int = 2,
    seed: int = 0, runs: int = 30, log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """`prune.py profile`: the table (reused or built), then predicted vs measured ms of the full model and of
    `checks` random cuts timed interleaved, with the error of each."""
    table, where = latency_table(model, config, threads, path, log)
    rng = np.random.default_rng(seed)
    models = {"full": model, **{f"random{i + 1}": random_cut(model, config, rng) for i in range(checks)}}
    rows = check_prediction(table, models, config.imgsz, threads, runs)
    return {"table": str(where), "key": table.key, "conv_scale": table.conv_scale, "rest_a": table.rest_a,
            "rest_b": table.rest_b, "check": rows}


def _block_ms(model: nn.Module, predictor: TablePredictor, widths: dict) -> list[float]:
    """Predicted ms of each removable residual block's convs at `widths`, largest first."""
    ms = predictor.layer_ms(widths)
    blocks = [r.name + "." for r in residual_blocks(model) if r.residual]
    return sorted((sum(v for n, v in ms.items() if n.startswith(b)) for b in blocks), reverse=True)


def check_budget(
    model: nn.Module, config: PruneConfig, threads: int = 1, path: str | Path | None = None, *,
    scale: str | None = None, depth: int | None = None, moves: tuple[str, ...] = ("width",),
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Before any training: the budget against the floor the cut can reach (one-line PruneError when below it) and
    the FLOPs fraction of the width-only plan for it (what a targeted sparse stage aims at).

    The floor is predicted on the model the prune stage will cut: after --drop-scale, every layer at its floor,
    minus the convs of the blocks --depth N (the N dearest to run) or depth moves (all) may remove, so it never
    refuses a budget the stage could reach. A speedup's budget is predicted (full / X); the stage measures it."""
    base = model
    if scale is not None:
        model = drop_scale(model, scale, imgsz=config.imgsz, flag="--drop-scale")[0]
    table, where = latency_table(model, config, threads, path, log)
    pred = TablePredictor(table)
    graph = build_graph(model, config.imgsz, config.ignore)
    sel = Selector(graph, group_scores(graph, "slim" if config.importance == "taylor" else config.importance),
                   config)  # fmt: skip
    full, floor = sel.predicted_ms(pred, 0), sel.predicted_ms(pred, sel.total)
    blocks = _block_ms(model, pred, sel.cost.widths(sel.sizes - sel.keeps(sel.total)))
    n_blocks = len(blocks) if "depth" in moves else min(depth or 0, len(blocks))
    floor -= sum(blocks[:n_blocks])
    budget = config.target_latency if config.target_latency is not None else full / config.target_speedup
    label = f"--target-latency {budget:g} ms" if config.target_latency is not None else \
        f"--target-speedup {config.target_speedup:g} (predicted budget {budget:.3g} ms of {full:.3g})"
    if floor > budget:
        moved = f" with {n_blocks} residual blocks removed" if n_blocks else ""
        raise PruneError(f"{label}: below the floor {floor:.3g} ms the layers can reach at --min-keep "
                         f"{config.min_keep:g} (--round-to {config.round_to}){moved}; predicted with {where}")
    try:
        k = sel.k_for_latency(LatencyGoal(pred, budget, label))
    except PruneError:  # reachable only with blocks removed: the width-only equivalent is the floor
        k = sel.total
    base_flops = graph.flops if base is model else build_graph(base, config.imgsz, config.ignore).flops
    return {"table": str(where), "full_ms": full, "floor_ms": floor, "budget_ms": budget,
            "flops_equivalent": float(sel.cost_at(k)[0] / base_flops)}  # fmt: skip


def latency_cut(
    model: nn.Module, config: PruneConfig, threads: int, path: str | Path | None, tolerance: float,
    moves: tuple[str, ...], calib_loader=None, images=None, log: Callable[[str], None] = print,
) -> tuple[nn.Module, Any]:
    """The pipeline's prune stage for a latency amount: the table, then prune_to_latency; (pruned, table)."""
    predictor, measure, facts = latency_tools(model, config, threads=threads, path=path, log=log)
    pruned, table = prune_to_latency(model, config, predictor, measure, calib_loader=calib_loader,
                                     tolerance=tolerance, log=log, moves=moves, images=images)  # fmt: skip
    table.latency.update(facts)
    return pruned, table
