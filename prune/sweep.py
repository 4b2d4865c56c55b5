"""Prune copies of a model at a range of ratios and see what each costs, before any fine-tuning."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import numpy as np
from torch import nn

from prune.apply import apply_plan
from prune.config import PruneConfig, PruneError
from prune.graph import build_graph
from prune.importance import group_scores
from prune.plan import plan_pruning
from yolo.data import load_data_yaml
from yolo.fileio import atomic_write_text
from yolo.val import build_val_loader, evaluate

DEFAULT_RATIOS = tuple(round(0.1 * i, 1) for i in range(1, 10))


@dataclass
class SweepRow:
    ratio: float  # requested fraction of channels REMOVED
    channels_removed: float  # achieved fraction (floors and rounding included)
    params: int
    gflops: float
    params_kept: float
    flops_kept: float
    max_removed_gamma: float | None
    map50: float | None = None
    map: float | None = None


@dataclass
class SweepResult:
    rows: list[SweepRow]
    baseline: dict  # params, gflops and (with data) map50 / map of the unpruned model
    share: float
    importance: str
    imgsz: int
    best_ratio: float | None = None  # largest ratio whose mAP50 >= share x the unpruned mAP50
    notes: list[str] = field(default_factory=list)

    def to_rows(self) -> list[dict]:
        return [asdict(r) for r in self.rows]

    def to_csv(self, path: str | Path) -> Path:
        buf = io.StringIO()
        cols = list(asdict(self.rows[0])) if self.rows else ["ratio"]
        w = csv.DictWriter(buf, fieldnames=cols)
        w.writeheader()
        for r in self.to_rows():
            w.writerow({k: "" if v is None else v for k, v in r.items()})
        return atomic_write_text(path, buf.getvalue())

    def to_json(self, path: str | Path) -> Path:
        d = {"baseline": self.baseline, "share": self.share, "best_ratio": self.best_ratio, "notes": self.notes,
             "importance": self.importance, "imgsz": self.imgsz, "rows": self.to_rows()}  # fmt: skip
        return atomic_write_text(path, json.dumps(d, indent=2) + "\n")

    def rich_table(self):
        # start-up: rich loads only when a table is printed (prune.py imports every command module to build its parser)
        from rich.table import Table

        has_map = any(r.map50 is not None for r in self.rows)
        t = Table(title=f"Prune sweep ({self.importance}, no fine-tuning, GFLOPs at {self.imgsz})")
        cols = ["ratio", "channels removed", "params", "GFLOPs", "FLOPs kept", "max removed |γ|"]
        cols += ["mAP50", "mAP50-95"] if has_map else []
        for c in cols:
            t.add_column(c, justify="right")
        b = self.baseline
        base = ["0 (unpruned)", "0%", f"{b['params'] / 1e6:.3f}M", f"{b['gflops']:.3f}", "100%", "-"]
        t.add_row(*base, *([_f(b.get("map50")), _f(b.get("map"))] if has_map else []))
        for r in self.rows:
            cells = [f"{r.ratio:g}", f"{100 * r.channels_removed:.1f}%", f"{r.params / 1e6:.3f}M", f"{r.gflops:.3f}",
                     f"{100 * r.flops_kept:.1f}%", _f(r.max_removed_gamma)]  # fmt: skip
            style = "bold green" if self.best_ratio is not None and r.ratio == self.best_ratio else None
            t.add_row(*cells, *([_f(r.map50), _f(r.map)] if has_map else []), style=style)
        if self.best_ratio is not None:
            t.caption = f"largest ratio keeping mAP50 >= {self.share:g} x unpruned: {self.best_ratio:g}"
        return t

    def plot(self, path: str | Path) -> Path:
        # matplotlib (slow to import) loads only when the sweep is plotted
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt  # after use("Agg"): pyplot picks its backend on import

        x = [0.0] + [r.ratio for r in self.rows]
        fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
        ax.plot(x, [1.0] + [r.flops_kept for r in self.rows], "s--", color="tab:gray", label="FLOPs kept")
        ax.plot(x, [1.0] + [r.params_kept for r in self.rows], "^--", color="tab:olive", label="params kept")
        if any(r.map50 is not None for r in self.rows):
            b = self.baseline
            ax.plot(x, [b.get("map50")] + [r.map50 for r in self.rows], "o-", color="tab:blue", label="mAP50")
            ax.plot(x, [b.get("map")] + [r.map for r in self.rows], "o-", color="tab:orange", label="mAP50-95")
            ax.axhline(self.share * b.get("map50", 0), color="tab:blue", lw=0.8, ls=":",
                       label=f"{self.share:g} x unpruned mAP50")  # fmt: skip
        if self.best_ratio is not None:
            ax.axvline(self.best_ratio, color="tab:green", lw=1.0, label=f"chosen ratio {self.best_ratio:g}")
        ax.set_xlabel("ratio (fraction of prunable channels removed)")
        ax.set_ylabel("fraction / mAP")
        ax.set_ylim(0, 1.05)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        ax.set_title(f"Pruning sweep ({self.importance}), before fine-tuning")
        fig.tight_layout()
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path)
        plt.close(fig)
        return path


def _f(v) -> str:
    return "-" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.4g}"


def sweep(
    model: nn.Module,
    ratios=DEFAULT_RATIOS,
    data: Any = None,
    config: PruneConfig | None = None,
    share: float = 0.9,
    calib_loader=None,
    evaluate_fn: Callable[[nn.Module], dict] | None = None,
    log: Callable[[str], None] | None = None,
    **eval_kwargs,
) -> SweepResult:
    """Prune a copy at each ratio; with `data` (a data.yaml / DataConfig) or `evaluate_fn` also score it.

    The graph and importances are computed once; the amount in `config` is replaced by each ratio.
    """
    ratios = sorted(float(r) for r in ratios)
    if not ratios or any(not 0 <= r < 1 for r in ratios):
        raise PruneError(f"sweep ratios must lie in [0, 1) (fraction of channels REMOVED), got {ratios}")
    base_cfg = replace(config or PruneConfig(), ratio=0.0, target_flops=None, target_params=None)
    scorer = evaluate_fn or (_default_evaluator(data, base_cfg.imgsz, **eval_kwargs) if data is not None else None)
    graph = build_graph(model, base_cfg.imgsz, base_cfg.ignore)
    scores = group_scores(graph, base_cfg.importance, calib_loader)
    baseline = {"params": graph.params, "gflops": graph.flops / 1e9}
    if scorer is not None:
        baseline.update(_metrics(scorer(model)))
        _log(log, f"unpruned: mAP50 {baseline['map50']:.4f}  mAP50-95 {baseline['map']:.4f}")
    rows = []
    for r in ratios:
        plan = plan_pruning(graph, replace(base_cfg, ratio=r), scores=scores)
        t = plan.table
        row = SweepRow(r, t.removed_fraction, t.params_after, t.gflops_after, t.params_kept, t.flops_kept,
                       None if math.isnan(t.max_removed_gamma) else t.max_removed_gamma)  # fmt: skip
        if scorer is not None:
            pruned = apply_plan(model, plan, calib_loader=calib_loader)
            m = _metrics(scorer(pruned))
            row.map50, row.map = m["map50"], m["map"]
        _log(log, t.summary_line() + (f"  mAP50 {row.map50:.4f}" if row.map50 is not None else ""))  # 'ratio 0.1: ...'
        rows.append(row)
    res = SweepResult(rows, baseline, share, base_cfg.importance, graph.imgsz)
    res.best_ratio = best_ratio(rows, baseline, share)
    return res


def best_ratio(rows: list[SweepRow], baseline: dict, share: float) -> float | None:
    """The largest ratio whose mAP50 stays >= share x the unpruned model's (None without scores)."""
    if baseline.get("map50") is None:
        return None
    ok = [r.ratio for r in rows if r.map50 is not None and r.map50 >= share * baseline["map50"] - 1e-12]
    return max(ok) if ok else None


def _metrics(res: dict) -> dict:
    return {"map50": float(res["map50"]), "map": float(res["map"])}


def _log(log, msg: str) -> None:
    if log is not None:
        log(msg)


def _default_evaluator(data: Any, imgsz: int, **kw) -> Callable[[nn.Module], dict]:
    """yolo.val.evaluate on the val split, with its dataloader built once for all ratios."""
    cfg = data if hasattr(data, "names") else load_data_yaml(data)
    bs, workers = int(kw.pop("batch_size", 16)), int(kw.pop("workers", 0))
    loader_cache: dict = {}

    def run(model: nn.Module) -> dict:
        if "loader" not in loader_cache:
            stride = int(max(getattr(model, "stride", np.array([32])).tolist()))
            loader_cache["loader"] = build_val_loader(cfg, "val", imgsz, bs, stride, workers=workers)
        return evaluate(model, cfg, imgsz=imgsz, batch_size=bs, dataloader=loader_cache["loader"], progress=False,
                        workers=workers, **kw)  # fmt: skip

    return run
