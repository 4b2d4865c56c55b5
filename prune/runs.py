"""Run folders (runs/prune/exp, exp2, ...) and what a pruning run leaves in them."""

from __future__ import annotations

from pathlib import Path

from torch import nn

from prune.config import PruneConfig
from prune.table import PruneTable
from yolo.checkpoint import save_checkpoint
from yolo.fileio import atomic_write_text

CHECKPOINT_NAME = "pruned.pt"


def pruned_meta(meta: dict | None, table: PruneTable, weights: str | Path | None = None) -> dict:
    """The source checkpoint's metadata with this pruning appended to its history."""
    meta = {k: v for k, v in (meta or {}).items() if k not in ("format", "date", "arch", "state_dict")}
    entry = table.summary()
    if weights is not None:
        entry["weights"] = str(weights)
    meta["history"] = [*list(meta.get("history") or []), entry]
    meta["imgsz"] = table.imgsz
    return meta


def save_pruned(
    out_dir: str | Path,
    model: nn.Module,
    meta: dict | None,
    table: PruneTable,
    config: PruneConfig | None = None,
    weights: str | Path | None = None,
) -> Path:
    """Write pruned.pt (our checkpoint format) and the prune table (csv, json, txt) into out_dir."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(out / CHECKPOINT_NAME, model, pruned_meta(meta, table, weights), half=True)
    table.to_csv(out / "prune_table.csv")
    table.to_json(out / "prune_table.json")
    atomic_write_text(out / "prune_table.txt", table.render_text())
    return path
