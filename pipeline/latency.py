"""Latency tools for the prune stage: the table-backed predictor and the ONNX Runtime timer it is handed.

prune/ may not import reports/ (import_rules.yaml), and reports/ does not know what a cut is; this module, allowed
both, joins them: the latency table (reports.layer_latency) is calibrated on the models a cut can produce (the
narrowest the floors allow, a half-width cut) and handed to prune.latency.prune_to_latency together with a timer.
`prune.py prune --target-latency` gets `latency_tools` as a default the dispatcher sets, as `val` gets its
exported-model loader.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from torch import nn

from prune.apply import apply_plan
from prune.config import PruneConfig
from prune.graph import build_graph
from prune.latency import Measure
from prune.plan import plan_pruning
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


def calibration_models(model: nn.Module, config: PruneConfig) -> dict[str, nn.Module]:
    """The narrowest model the floors allow and a half-width cut: the whole-model timings the table's rest is
    fitted on, spanning the widths a search visits."""
    return {"floor": _quiet_plan(model, cut_config(config, FLOOR_RATIO)),
            "half": _quiet_plan(model, cut_config(config, 0.5))}  # fmt: skip


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
    return TablePredictor(table), measure, {"table": str(where), "key": table.key, "threads": threads, "runs": runs}



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
    return {"table": str(where), "key": table.key, "rest_a": table.rest_a, "rest_b": table.rest_b, "check": rows}
