"""Run folders (runs/finetune/exp, exp2, ...), results.csv and results.png."""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Mapping, Sequence
from pathlib import Path

import yaml

from yolo.fileio import atomic_write_text


def write_yaml(path: Path, data: Mapping) -> None:
    atomic_write_text(path, yaml.safe_dump(dict(data), sort_keys=False))


class ResultsLog:
    """Rows of per-epoch results, rewritten to `results.csv` whole after each epoch (never half a file)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.rows: list[dict] = []

    def load(self, before_epoch: int) -> None:
        """Keep the rows of an earlier run of this folder whose epoch < before_epoch (resume)."""
        self.rows = [r for r in read_results(self.path) if int(r["epoch"]) < before_epoch]

    def append(self, row: Mapping) -> None:
        self.rows.append(dict(row))
        self.write()

    def write(self) -> None:
        columns: list[str] = []
        for r in self.rows:
            columns.extend(k for k in r if k not in columns)
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, restval="", lineterminator="\n")
        w.writeheader()
        for r in self.rows:
            w.writerow({k: _fmt(v) for k, v in r.items()})
        atomic_write_text(self.path, buf.getvalue())


def read_results(path: str | Path) -> list[dict]:
    """A results.csv as rows of numbers (NaN where a column was left empty, e.g. an epoch not scored); [] if
    there is no file."""
    path = Path(path)
    if not path.is_file():
        return []
    with open(path, newline="") as f:
        return [{k: _parse(v) for k, v in r.items()} for r in csv.DictReader(f)]


def _fmt(v):
    if isinstance(v, float):
        return "" if math.isnan(v) else f"{v:.6g}"
    return v


def _parse(v: str):
    if v == "":
        return math.nan
    try:
        return int(v)
    except ValueError:
        try:
            return float(v)
        except ValueError:
            return v


PLOT_KEYS = (
    ("train/box_loss", "box loss"),
    ("train/obj_loss", "objectness loss"),
    ("train/cls_loss", "class loss"),
    ("metrics/mAP_0.5", "mAP50"),
    ("metrics/mAP_0.5:0.95", "mAP50-95"),
    ("gamma_lt_1e-2", "fraction |gamma| < 1e-2"),
)


def plot_results(rows: Sequence[Mapping], path: Path) -> Path:
    """Loss and mAP curves by epoch (matplotlib Agg)."""
    # imported here, not at the top: pyplot must load after the Agg backend is chosen, and choosing it at import
    # time would be a side effect on every importer of this module
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

    fig, axes = plt.subplots(2, 3, figsize=(10, 5.5))
    epochs = [r["epoch"] for r in rows]
    for ax, (key, title) in zip(axes.ravel(), PLOT_KEYS):
        pts = [(e, r.get(key)) for e, r in zip(epochs, rows) if isinstance(r.get(key), (int, float))]
        pts = [(e, v) for e, v in pts if not math.isnan(v)]
        if pts:
            ax.plot(*zip(*pts), marker="o", ms=3, lw=1.2)
        ax.set_title(title, fontsize=9)
        ax.set_xlabel("epoch", fontsize=8)
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return Path(path)
