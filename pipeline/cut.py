"""The prune stage's cut: each round's amount, the structural moves of the first round, then the channel cut (a
ratio / FLOPs / params target by the plan, a latency budget by the timed search of pipeline.latency)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from pipeline.latency import latency_cut
from prune.api import depth_prune, drop_scale, prune_model
from prune.calib import calib_loader
from prune.config import PruneConfig
from prune.latency_moves import parse_moves
from yolo.checkpoint import load_model
from yolo.flops import model_info


def round_amount(amount: dict, rounds: int, r: int, model: nn.Module, original: str, imgsz: int) -> dict:
    """The PruneConfig amount for round r of `rounds`, relative to `model` (the current, already pruned one).

    After round r the model keeps target^(r/R) of the ORIGINAL model's FLOPs (or parameters); a channel ratio
    removes 1 - (1 - ratio)^(1/R) of the current prunable channels each round. With one round this is the
    requested amount itself (a latency budget is always one round: PipelineOptions refuses more).
    """
    if rounds == 1:
        return dict(amount)
    if amount.get("ratio") is not None:
        return {"ratio": 1 - (1 - amount["ratio"]) ** (1 / rounds)}
    flops = amount.get("target_flops")
    key, target = ("gflops", flops) if flops is not None else ("params", amount["target_params"])
    base = model_info(load_model(original)[0], imgsz)[key]
    now = model_info(model, imgsz)[key]
    goal = base * target ** (r / rounds)
    name = "target_flops" if key == "gflops" else "target_params"
    return {name: min(1.0, goal / now)}


def structural_moves(model: nn.Module, data, cfg: PruneConfig, scale: str | None, depth: int | None) -> tuple:
    """--drop-scale, then --depth (block importance on calibration images), before the first channel cut."""
    steps = []
    if scale is not None:
        model, table = drop_scale(model, scale, imgsz=cfg.imgsz, flag="--drop-scale")
        steps.append(table)
    if depth is not None:
        images = calib_loader(data, cfg.imgsz, cfg.calib_images, batch_size=8)
        model, table = depth_prune(model, depth, images, imgsz=cfg.imgsz, n_images=cfg.calib_images, flag="--depth")
        steps.append(table)
    return model, steps


def channel_cut(
    model: nn.Module, cfg: PruneConfig, data, latency: dict[str, Any], log: Callable[[str], None] = print
) -> tuple[nn.Module, Any]:
    """(pruned, prune table). `latency`: threads, path, tolerance and moves of a latency amount."""
    calib = calib_loader(data, cfg.imgsz, cfg.images_needed, batch_size=8) if cfg.needs_images else None
    if not cfg.wants_latency:
        return prune_model(model, cfg, calib_loader=calib)
    moves = parse_moves(latency["moves"])
    images = calib_loader(data, cfg.imgsz, cfg.calib_images, batch_size=8) if "depth" in moves else None
    return latency_cut(model, cfg, latency["threads"], latency["path"], latency["tolerance"], moves, calib, images,
                       log=log)  # fmt: skip
