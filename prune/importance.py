"""Channel importance per group, on one global scale so a single threshold applies across all layers.

slim  network slimming: the BatchNorm |gamma| of the channel (raw, no per-layer normalisation); a coupled channel
      is judged by its LARGEST |gamma| over the group's BatchNorms, so it goes only if every member allows.
l1    mean |w| of the channel's filter (L1 norm divided by the filter size, so layers of any fan-in compare);
      largest over the group's producing convs.
l2    RMS of the channel's filter (L2 norm / sqrt(filter size)); largest over the producing convs.
taylor  first-order estimate of what removing the channel costs the detection loss on labelled calibration images
      (Molchanov et al. 2019, "Importance Estimation for Neural Network Pruning"): per batch, the sum over the
      group's BatchNorms of gamma * dL/dgamma, squared, averaged over batches. In loss units, so layers compare
      without any normalisation: for checkpoints that were not sparse-trained, whose |gamma| says little.
"""

from __future__ import annotations

import copy
from typing import Iterable

import numpy as np
import torch

from prune.config import IMPORTANCES, PruneError
from prune.graph import GroupInfo, PruneGraph
from yolo.errors import classes_text
from yolo.hyp import load_hyp
from yolo.loss import YoloLoss, scale_loss_gains
from yolo.modules import Detect

TAYLOR_NEEDS_DATA = "importance 'taylor' needs labelled calibration images (--data / calib_loader)"


def group_scores(graph: PruneGraph, importance: str = "slim", calib_loader: Iterable | None = None) -> list[np.ndarray]:
    """One score per channel of every prunable group (higher = more important)."""
    if importance not in IMPORTANCES:
        raise PruneError(f"importance {importance!r} unknown; use one of {', '.join(IMPORTANCES)}")
    if importance == "slim":
        return [g.gamma.copy() for g in graph.groups]
    if importance == "taylor":
        if calib_loader is None:
            raise PruneError(TAYLOR_NEEDS_DATA)
        return taylor_scores(graph, calib_loader)
    return [_filter_score(graph, g, importance) for g in graph.groups]


def taylor_scores(graph: PruneGraph, loader: Iterable) -> list[np.ndarray]:
    """Per group channel: mean over batches of (sum over its BatchNorms of gamma * dL/dgamma)^2.

    Only gamma moves: the cut keeps a removed channel's constant act(beta) (beta compensation), so the loss change
    to estimate is that of gamma -> 0. The model is scored in eval mode (running statistics), as it will be cut.
    """
    model = copy.deepcopy(graph.model).float().eval()
    for p in model.parameters():
        p.requires_grad_(True)
    compute_loss = _detection_loss(model, loader, graph.imgsz)
    device = next(model.parameters()).device
    bns = {n: m for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    totals = [np.zeros(g.channels) for g in graph.groups]
    batches = 0
    for batch in loader:
        model.zero_grad(set_to_none=True)
        imgs = batch[0].to(device).float() / 255
        loss, _ = compute_loss(model(imgs)[1], batch[1].to(device))
        loss.backward()
        first = {n: (m.weight * m.weight.grad).detach().double().cpu().numpy() for n, m in bns.items()}
        for g, total in zip(graph.groups, totals):
            step = np.zeros(g.channels)
            for m in g.members:
                if m.kind == "bn":
                    np.add.at(step, m.root, first[m.name][m.idxs])
            total += step**2
        batches += 1
    if not batches:
        raise PruneError(TAYLOR_NEEDS_DATA + ": the calibration loader gave no images")
    return [t / batches for t in totals]


def _detection_loss(model: torch.nn.Module, loader: Iterable, imgsz: int):
    """YOLOv5's loss with the default gains; the data's classes must be the model's (the loss reads class ids)."""
    detect = model.model[-1] if isinstance(getattr(model, "model", None), torch.nn.Sequential) else None
    if not isinstance(detect, Detect):
        raise PruneError("importance 'taylor' needs a YOLOv5 detection model (its loss scores the channels)")
    names = getattr(getattr(loader, "dataset", None), "names", None)
    if names is not None and len(names) != detect.nc:
        raise PruneError(
            f"importance 'taylor' scores channels by the detection loss on the calibration images: the model "
            f"predicts {classes_text(detect.nc)}, the data has {len(names)} (train a head for this data first)"
        )
    return YoloLoss(model, scale_loss_gains(load_hyp(None), detect.nl, detect.nc, imgsz))


def _filter_score(graph: PruneGraph, g: GroupInfo, importance: str) -> np.ndarray:
    out = np.zeros(g.channels)
    for m in g.members:
        if m.kind not in ("out", "dw"):
            continue
        w = graph.module(m.name).weight.detach().float().cpu().flatten(1)
        s = w.abs().mean(1) if importance == "l1" else w.pow(2).mean(1).sqrt()
        np.maximum.at(out, m.root, s.numpy().astype(np.float64)[m.idxs])
    return out
