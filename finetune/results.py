"""What a run reports: the per-epoch results row's columns, the fitness that picks best.pt, the printed lines."""

from __future__ import annotations

import math

LOSS_NAMES = ("train/box_loss", "train/obj_loss", "train/cls_loss")
METRIC_KEYS = (
    ("metrics/precision", "precision"),
    ("metrics/recall", "recall"),
    ("metrics/mAP_0.5", "map50"),
    ("metrics/mAP_0.5:0.95", "map"),
)


def fitness(metrics: dict) -> float:
    """YOLOv5's model fitness: 0.1 * mAP50 + 0.9 * mAP50-95."""
    return 0.1 * float(metrics.get("map50", 0.0)) + 0.9 * float(metrics.get("map", 0.0))


def target_text(target: dict) -> str:
    """A --sparsity-target as words: 'target_flops 0.5'."""
    amount = {k: v for k, v in target.items() if k in ("ratio", "target_flops", "target_params") and v is not None}
    return ", ".join(f"{k} {v:g}" for k, v in amount.items())


def format_row(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs - 1}"]
    parts += [f"{k.split('/')[1].replace('_loss', '')} {row[k]:.4f}" for k in row if str(k).startswith("train/")]
    for key, label in (("metrics/precision", "P"), ("metrics/recall", "R"), ("metrics/mAP_0.5", "mAP50"),
                       ("metrics/mAP_0.5:0.95", "mAP50-95")):
        v = row.get(key, math.nan)
        if isinstance(v, float) and not math.isnan(v):
            parts.append(f"{label} {v:.3f}")
    if row.get("sparsity_sr"):
        parts.append(f"sr {row['sparsity_sr']:.2g}")
    if "gamma_lt_1e-2" in row:
        parts.append(f"|gamma|<1e-2 {row['gamma_lt_1e-2']:.3f}")
    if "cut_gamma_max" in row:
        parts.append(f"cut {row['cut_channels']} ch, max |gamma| {row['cut_gamma_max']:.3g}")
    parts.append(f"steps {row['optimizer_steps']}")
    if "time" in row:
        parts.append(f"{row['time']:.1f}s")
    return "  ".join(parts)
