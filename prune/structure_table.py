"""The record of a structural move (depth pruning, a dropped detection scale): rows, sizes before and after, and
the files and history entry a run leaves, like the channel prune table."""

from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

from torch import nn

from yolo.fileio import atomic_write_text
from yolo.flops import count_gflops, count_params
from yolo.imgsz import check_imgsz, max_stride


@dataclass
class StructureTable:
    """Base of DepthTable and ScaleTable: subclasses set `op`, `stem`, `columns` and give rows and details."""

    request: str
    imgsz: int
    params_before: int
    params_after: int
    gflops_before: float
    gflops_after: float

    op: ClassVar[str] = "structure"
    title: ClassVar[str] = "Structural move"
    stem: ClassVar[str] = "structure_table"
    columns: ClassVar[tuple[str, ...]] = ()

    @staticmethod
    def sizes(before: nn.Module, after: nn.Module, imgsz: int) -> dict:
        """Parameters and GFLOPs of both models at `imgsz` (rounded up to each model's input stride)."""
        def gflops(m: nn.Module) -> float:
            return count_gflops(m, check_imgsz(imgsz, max_stride(m), round_up=True))

        return {"params_before": count_params(before), "params_after": count_params(after),
                "gflops_before": gflops(before), "gflops_after": gflops(after)}  # fmt: skip

    def to_rows(self) -> list[dict]:  # pragma: no cover - every subclass has rows
        raise NotImplementedError

    def details(self) -> dict:
        """What the move did, in plain types (history entry and JSON)."""
        return {}

    def totals(self) -> dict:
        return {
            "request": self.request, "imgsz": self.imgsz,
            "params_before": self.params_before, "params_after": self.params_after,
            "params_kept": round(self.params_after / self.params_before, 6) if self.params_before else 1.0,
            "gflops_before": round(self.gflops_before, 4), "gflops_after": round(self.gflops_after, 4),
            "flops_kept": round(self.gflops_after / self.gflops_before, 6) if self.gflops_before else 1.0,
        }  # fmt: skip

    def summary(self) -> dict:
        """The checkpoint's meta['history'] entry."""
        return {"op": self.op, **self.totals(), **self.details()}

    def summary_line(self) -> str:
        t = self.totals()
        return (f"{self.request}: params {self.params_before / 1e6:.3f}M -> {self.params_after / 1e6:.3f}M "
                f"({t['params_kept']:.1%} kept), GFLOPs@{self.imgsz} {self.gflops_before:.3f} -> "
                f"{self.gflops_after:.3f} ({t['flops_kept']:.1%} kept)")  # fmt: skip

    def to_json(self, path: str | Path) -> Path:
        d = {"totals": self.totals(), **self.details(), "rows": self.to_rows()}
        return atomic_write_text(path, json.dumps(d, indent=2) + "\n")

    def to_csv(self, path: str | Path) -> Path:
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=list(self.columns), extrasaction="ignore")
        w.writeheader()
        for r in self.to_rows():
            w.writerow({k: ("" if r.get(k) is None else r[k]) for k in self.columns})
        return atomic_write_text(path, buf.getvalue())

    def rich_table(self):
        # start-up: rich loads only when a table is printed (prune.py imports every command module to build its parser)
        from rich.table import Table

        t = Table(title=f"{self.title}: {self.request}")
        for col in self.columns:
            t.add_column(col)
        for r in self.to_rows():
            t.add_row(*(_cell(r.get(c)) for c in self.columns))
        t.caption = self.summary_line()
        return t

    def render_text(self, width: int = 140) -> str:
        # start-up: rich loads only when a table is printed (prune.py imports every command module to build its parser)
        from rich.console import Console

        console = Console(file=io.StringIO(), width=width, record=True)
        console.print(self.rich_table())
        return console.export_text()

    def write(self, out_dir: str | Path) -> list[Path]:
        """<stem>.csv / .json / .txt in out_dir."""
        out = Path(out_dir)
        return [self.to_csv(out / f"{self.stem}.csv"), self.to_json(out / f"{self.stem}.json"),
                atomic_write_text(out / f"{self.stem}.txt", self.render_text())]  # fmt: skip


def _cell(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.4g}"
    if isinstance(v, (list, tuple)):
        return " ".join(str(x) for x in v)
    return str(v)
