"""Console output: a rich progress bar with running losses on a terminal, one plain line per epoch otherwise."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn


def is_tty() -> bool:
    return sys.stdout.isatty()


class EpochProgress:
    """Progress of one epoch's batches. Does nothing unless `live` (a terminal and the main process)."""

    def __init__(self, live: bool, total: int, label: str, start: int = 0, extra: Sequence[str] = ()):
        self.live, self.total, self.label, self.start = live, total, label, start
        self.extra = tuple(extra)  # names of the losses after box, obj, cls (e.g. distill)
        self._progress = None
        self._task = None

    def __enter__(self) -> EpochProgress:
        if self.live:
            self._progress = Progress(
                TextColumn("{task.description}"),
                BarColumn(bar_width=24),
                MofNCompleteColumn(),
                TimeRemainingColumn(),
                TextColumn("{task.fields[losses]}"),
                transient=False,
            )
            self._progress.start()
            self._task = self._progress.add_task(self.label, total=self.total, completed=self.start, losses="")
        return self

    def update(self, losses: Sequence[float], n_targets: int, img_size: int) -> None:
        if self._progress is not None:
            box, obj, cls = (float(x) for x in losses[:3])
            more = "".join(f"  {n} {float(v):.4f}" for n, v in zip(self.extra, losses[3:]))
            text = f"box {box:.4f}  obj {obj:.4f}  cls {cls:.4f}{more}  {n_targets} labels  {img_size}px"
            self._progress.update(self._task, advance=1, losses=text)

    def __exit__(self, *exc) -> None:
        if self._progress is not None:
            self._progress.stop()


def log(msg: str, enabled: bool = True) -> None:
    if enabled:
        print(msg, flush=True)
