"""Statistics and pictures of BatchNorm scales (gamma), to watch the sparse stage work."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from yolo.modules import bn_gammas

# log10|gamma| histogram bins shared by every epoch so the curves are comparable.
HIST_EDGES = np.linspace(-6.0, 1.0, 71)
_FLOOR = 1e-6


def gamma_stats(model: nn.Module, bns: Iterable[nn.BatchNorm2d] | None = None) -> dict:
    """Count, fractions of |gamma| below 1e-3 and 1e-2, and quantiles of |gamma|."""
    g = bn_gammas(model, bns).abs()
    n = int(g.numel())
    if n == 0:
        return {"count": 0, "lt_1e-3": 0.0, "lt_1e-2": 0.0, "min": 0.0, "q10": 0.0, "median": 0.0,
                "q90": 0.0, "max": 0.0}
    q = torch.quantile(g, torch.tensor([0.1, 0.5, 0.9]))
    return {
        "count": n,
        "lt_1e-3": float((g < 1e-3).float().mean()),
        "lt_1e-2": float((g < 1e-2).float().mean()),
        "min": float(g.min()),
        "q10": float(q[0]),
        "median": float(q[1]),
        "q90": float(q[2]),
        "max": float(g.max()),
    }


def gamma_histogram(model: nn.Module, bns: Iterable[nn.BatchNorm2d] | None = None) -> list[int]:
    """Counts of log10|gamma| in HIST_EDGES (values below 1e-6 land in the first bin)."""
    g = bn_gammas(model, bns).abs().clamp_min(_FLOOR).numpy()
    counts, _ = np.histogram(np.clip(np.log10(g), HIST_EDGES[0], HIST_EDGES[-1]), bins=HIST_EDGES)
    return [int(c) for c in counts]


def plot_gamma_histograms(history: Sequence[dict | Sequence[int]], path: str | Path) -> Path:
    """A PNG of the gamma distribution epoch by epoch: one offset log10|gamma| histogram per epoch.

    `history` items are histograms (counts over HIST_EDGES) or dicts with keys "epoch" and "hist".
    """
    # imported here, not at the top: pyplot must load after the Agg backend is chosen, and choosing it at import
    # time would be a side effect on every importer of this module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after the backend choice above

    rows = [h if isinstance(h, dict) else {"epoch": i, "hist": h} for i, h in enumerate(history)]
    centres = (HIST_EDGES[:-1] + HIST_EDGES[1:]) / 2
    fig, ax = plt.subplots(figsize=(7, 1.2 + 0.35 * max(len(rows), 1)))
    cmap = plt.get_cmap("viridis")
    peak = max((max(r["hist"]) for r in rows if len(r["hist"])), default=1) or 1
    for k, r in enumerate(rows):
        y = np.asarray(r["hist"], dtype=float) / peak * 0.9 + k * 0.5
        colour = cmap(k / max(len(rows) - 1, 1))
        ax.fill_between(centres, k * 0.5, y, color=colour, alpha=0.6, lw=0)
        ax.plot(centres, y, color=colour, lw=0.8)
        ax.text(HIST_EDGES[0], k * 0.5 + 0.05, f"epoch {r['epoch']}", fontsize=7, va="bottom")
    for t in (-3, -2):
        ax.axvline(t, color="0.5", ls="--", lw=0.6)
    ax.set_xlabel("log10 |BatchNorm gamma|")
    ax.set_yticks([])
    ax.set_title("BatchNorm scale distribution by epoch")
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
