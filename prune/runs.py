"""Run folders (runs/prune/exp, exp2, ...) and what a pruning run leaves in them."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from torch import nn

from prune.config import PruneConfig
from prune.structure_table import StructureTable
from prune.table import PruneTable
from yolo.checkpoint import save_checkpoint
from yolo.fileio import atomic_write_text

CHECKPOINT_NAME = "pruned.pt"


def pruned_meta(
    meta: dict | None, table: PruneTable | None, weights: str | Path | None = None,
    steps: Sequence[StructureTable] = (),
) -> dict:
    """The source checkpoint's metadata with this run's moves (structural steps, then the channel cut) appended to
    its history."""
    meta = {k: v for k, v in (meta or {}).items() if k not in ("format", "date", "arch", "state_dict")}
    entries = [s.summary() for s in steps] + ([table.summary()] if table is not None else [])
    for entry in entries:
        if weights is not None:
            entry["weights"] = str(weights)
    meta["history"] = [*list(meta.get("history") or []), *entries]
    last = table if table is not None else (steps[-1] if steps else None)
    if last is not None:
        meta["imgsz"] = last.imgsz
    return meta


def save_pruned(
    out_dir: str | Path,
    model: nn.Module,
    meta: dict | None,
    table: PruneTable | None,
    config: PruneConfig | None = None,
    weights: str | Path | None = None,
    steps: Sequence[StructureTable] = (),
) -> Path:
    """Write pruned.pt (our checkpoint format) and the tables into out_dir: the prune table (csv, json, txt) when
    channels were cut, and each structural step's own (depth_table.*, scale_table.*)."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    path = save_checkpoint(out / CHECKPOINT_NAME, model, pruned_meta(meta, table, weights, steps), half=True)
    for step in steps:
        step.write(out)
    if table is not None:
        table.to_csv(out / "prune_table.csv")
        table.to_json(out / "prune_table.json")
        atomic_write_text(out / "prune_table.txt", table.render_text())
    return path
