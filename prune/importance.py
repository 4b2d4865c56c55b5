"""Channel importance per group, on one global scale so a single threshold applies across all layers.

slim  network slimming: the BatchNorm |gamma| of the channel (raw, no per-layer normalisation); a coupled channel
      is judged by its LARGEST |gamma| over the group's BatchNorms, so it goes only if every member allows.
l1    mean |w| of the channel's filter (L1 norm divided by the filter size, so layers of any fan-in compare);
      largest over the group's producing convs.
l2    RMS of the channel's filter (L2 norm / sqrt(filter size)); largest over the producing convs.
"""

from __future__ import annotations

import numpy as np

from prune.config import IMPORTANCES, PruneError
from prune.graph import GroupInfo, PruneGraph


def group_scores(graph: PruneGraph, importance: str = "slim") -> list[np.ndarray]:
    """One score per channel of every prunable group (higher = more important)."""
    if importance not in IMPORTANCES:
        raise PruneError(f"importance {importance!r} unknown; use one of {', '.join(IMPORTANCES)}")
    if importance == "slim":
        return [g.gamma.copy() for g in graph.groups]
    return [_filter_score(graph, g, importance) for g in graph.groups]


def _filter_score(graph: PruneGraph, g: GroupInfo, importance: str) -> np.ndarray:
    out = np.zeros(g.channels)
    for m in g.members:
        if m.kind not in ("out", "dw"):
            continue
        w = graph.module(m.name).weight.detach().float().cpu().flatten(1)
        s = w.abs().mean(1) if importance == "l1" else w.pow(2).mean(1).sqrt()
        np.maximum.at(out, m.root, s.numpy().astype(np.float64)[m.idxs])
    return out
