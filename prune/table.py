"""The prune table: one row per prunable group, plus totals, as rows / CSV / JSON / a rich table."""

from __future__ import annotations

import csv
import io
import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

from yolo.fileio import atomic_write_text

COLUMNS = ("layer", "name", "type", "coupled", "before", "after", "removed_pct", "min_kept_gamma",
           "max_removed_gamma", "min_kept_score", "ms_before", "ms_after")  # fmt: skip


@dataclass
class PruneRow:
    layer: int  # yaml layer index
    name: str  # first producing conv of the group
    type: str  # yaml module type (C3, Conv, SPPF, ...)
    coupled: int  # convs whose outputs are these same channels (residual adds)
    before: int
    after: int
    min_kept_gamma: float  # smallest |gamma| kept (group max over its BNs)
    max_removed_gamma: float  # largest |gamma| removed
    min_kept_score: float  # smallest importance kept (= min_kept_gamma for 'slim')
    ms_before: float = math.nan  # predicted ms of the group's producing convs (latency targets only)
    ms_after: float = math.nan

    @property
    def removed_pct(self) -> float:
        return 100.0 * (self.before - self.after) / self.before if self.before else 0.0

    def as_dict(self) -> dict:
        d = asdict(self)
        d["removed_pct"] = round(self.removed_pct, 2)
        return {k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in d.items()}


@dataclass
class PruneTable:
    rows: list[PruneRow]
    importance: str
    threshold: float  # the one global importance threshold
    request: str
    params_before: int
    params_after: int
    gflops_before: float
    gflops_after: float
    imgsz: int
    protected: list[tuple[str, str]] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    # latency targets: budget_ms, goal_ms, predicted_before_ms, predicted_ms, measured_before_ms, measured_ms,
    # iterations (goal, predicted, measured of each correction), table (the latency table's file and key)
    latency: dict = field(default_factory=dict)

    @property
    def channels_before(self) -> int:
        return sum(r.before for r in self.rows)

    @property
    def channels_after(self) -> int:
        return sum(r.after for r in self.rows)

    @property
    def removed_fraction(self) -> float:
        return 1 - self.channels_after / self.channels_before if self.channels_before else 0.0

    @property
    def flops_kept(self) -> float:
        return self.gflops_after / self.gflops_before if self.gflops_before else 1.0

    @property
    def params_kept(self) -> float:
        return self.params_after / self.params_before if self.params_before else 1.0

    @property
    def max_removed_gamma(self) -> float:
        vals = [r.max_removed_gamma for r in self.rows if not math.isnan(r.max_removed_gamma)]
        return max(vals) if vals else math.nan

    def summary_line(self) -> str:
        return (
            f"{self.request}: channels {self.channels_before} -> {self.channels_after} "
            f"(-{100 * self.removed_fraction:.1f}%), params {self.params_before / 1e6:.3f}M -> "
            f"{self.params_after / 1e6:.3f}M ({self.params_kept:.1%} kept), GFLOPs@{self.imgsz} "
            f"{self.gflops_before:.3f} -> {self.gflops_after:.3f} ({self.flops_kept:.1%} kept)"
            + (f"; {self.latency_line()}" if self.latency else "")
        )

    def latency_line(self) -> str:
        """Budget, predicted and measured latency of a latency-targeted cut."""
        lat = self.latency
        parts = [f"budget {lat['budget_ms']:.2f} ms" if "budget_ms" in lat else ""]
        if lat.get("target_ms") and abs(lat["budget_ms"] / lat["target_ms"] - 1.0) > 0.005:
            parts[0] = (f"budget {lat['target_ms']:.2f} ms ({lat['budget_ms']:.2f} at the machine's pace when the "
                        "chosen cut was timed)")
        if "predicted_ms" in lat:
            parts.append(f"predicted {lat.get('predicted_before_ms', math.nan):.2f} -> {lat['predicted_ms']:.2f} ms")
        if "measured_ms" in lat:
            before = lat.get("measured_before_ms")
            parts.append(f"measured {'' if before is None else f'{before:.2f} -> '}{lat['measured_ms']:.2f} ms "
                         f"({lat.get('threads', '?')} thread(s))")  # fmt: skip
        if lat.get("depth_moves"):
            parts.append("residual blocks removed by the search: " + " ".join(m["name"] for m in lat["depth_moves"]))
        return "latency " + ", ".join(p for p in parts if p)

    def to_rows(self) -> list[dict]:
        return [r.as_dict() for r in self.rows]

    def totals(self) -> dict:
        thr = self.threshold if math.isfinite(self.threshold) else None
        return {
            "importance": self.importance, "request": self.request, "threshold": thr,
            "channels_before": self.channels_before, "channels_after": self.channels_after,
            "channels_removed_fraction": round(self.removed_fraction, 6),
            "params_before": self.params_before, "params_after": self.params_after,
            "params_kept": round(self.params_kept, 6), "gflops_before": round(self.gflops_before, 4),
            "gflops_after": round(self.gflops_after, 4), "flops_kept": round(self.flops_kept, 6),
            "imgsz": self.imgsz, "max_removed_gamma": _none_if_nan(self.max_removed_gamma),
            **({"latency": self.latency} if self.latency else {}),
        }  # fmt: skip

    def summary(self) -> dict:
        """What goes into the checkpoint's meta['history']."""
        return {
            "op": "prune", **self.totals(), "config": self.config,
            "layers": [[r.name, r.before, r.after] for r in self.rows],
            "protected": [list(p) for p in self.protected], "warnings": list(self.warnings),
        }  # fmt: skip

    def to_json(self, path: str | Path) -> Path:
        d = {"totals": self.totals(), "rows": self.to_rows(), "protected": [list(p) for p in self.protected],
             "warnings": self.warnings, "config": self.config}  # fmt: skip
        return atomic_write_text(path, json.dumps(d, indent=2) + "\n")

    def to_csv(self, path: str | Path) -> Path:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(COLUMNS))
        w.writeheader()
        for r in self.to_rows():
            w.writerow({k: ("" if r[k] is None else r[k]) for k in COLUMNS})
        return atomic_write_text(path, buf.getvalue())

    def rich_table(self):
        # start-up: rich loads only when a table is printed (prune.py imports every command module to build its parser)
        from rich.table import Table

        thr = f"{self.threshold:.4g}" if math.isfinite(self.threshold) else "inf"
        t = Table(title=f"Prune plan: {self.request}; importance {self.importance}, global threshold {thr}")
        for col, just in (("layer", "right"), ("name", "left"), ("type", "left"), ("coupled", "right"),
                          ("channels", "right"), ("removed", "right"), ("min kept |γ|", "right"),
                          ("max removed |γ|", "right")):  # fmt: skip
            t.add_column(col, justify=just)
        timed = bool(self.latency)
        if timed:
            t.add_column("predicted ms", justify="right")
        for r in self.rows:
            ms = [f"{r.ms_before:.3f} -> {r.ms_after:.3f}"] if timed else []
            t.add_row(str(r.layer), r.name, r.type, str(r.coupled), f"{r.before} -> {r.after}",
                      f"{r.removed_pct:.0f}%", _fmt(r.min_kept_gamma), _fmt(r.max_removed_gamma), *ms)  # fmt: skip
        t.add_section()
        total_ms = [f"{self.latency.get('predicted_before_ms', math.nan):.2f} -> "
                    f"{self.latency.get('predicted_ms', math.nan):.2f}"] if timed else []  # fmt: skip
        t.add_row("", "total", "", "", f"{self.channels_before} -> {self.channels_after}",
                  f"{100 * self.removed_fraction:.1f}%", "", _fmt(self.max_removed_gamma), *total_ms)  # fmt: skip
        t.caption = (
            f"params {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M ({self.params_kept:.1%} kept); "
            f"GFLOPs@{self.imgsz} {self.gflops_before:.3f} -> {self.gflops_after:.3f} ({self.flops_kept:.1%} kept)"
            + (f"; {self.latency_line()}" if timed else "")
        )
        return t

    def render_text(self, width: int = 140) -> str:
        # start-up: rich loads only when a table is printed (prune.py imports every command module to build its parser)
        from rich.console import Console

        console = Console(file=io.StringIO(), width=width, record=True)
        console.print(self.rich_table())
        for name, why in self.protected:
            console.print(f"protected: {name}: {why}")
        for w in self.warnings:
            console.print(f"warning: {w}")
        return console.export_text()


def _fmt(v: float) -> str:
    return "-" if v is None or math.isnan(v) else f"{v:.4g}"


def _none_if_nan(v: float):
    return None if v is None or math.isnan(v) else v
