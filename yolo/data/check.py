"""The data check every command shares: what a dataset scan dropped, clipped or did not use, said or refused.

`DetectionDataset` scans every image and label file once and keeps what it found in a `LabelReport`;
`create_dataloader` (the loader val, training, the pipeline, report scoring and the prune calibration all use)
hands that report to `settle_report`, which either

- prints a summary line counting everything by reason, then the first offenders as `file:line: reason`, to
  stderr, once per split per run (the main DDP rank only; loader workers never rescan), or
- under `--strict` (`data_checks(strict=True)` around a command), raises one `DataError` naming the first
  offender, which the CLIs print as one line and exit 2.

A run is a `data_checks()` block (each CLI command opens one); outside any, the process is one run.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from yolo.data.data_yaml import DataConfig, load_data_yaml
from yolo.data.dataset import DetectionDataset
from yolo.data.files import DataError, PathLike
from yolo.data.labels import LabelReport

SHOWN_OFFENDERS = 5  # offender lines printed under the summary; the rest are counted


@dataclass
class _Run:
    """One command's data-check settings and the reports it has already said."""

    strict: bool = False
    said: set[str] = field(default_factory=set)


_runs: list[_Run] = [_Run()]  # innermost data_checks() block last; the first is the process-wide default


@contextlib.contextmanager
def data_checks(strict: bool = False) -> Iterator[None]:
    """One run: each split's problems are said once inside it, or with `strict` refused as a DataError."""
    _runs.append(_Run(strict=strict))
    try:
        yield
    finally:
        _runs.pop()


def settle_report(report: LabelReport, show: bool = True) -> None:
    """Say what the scan behind `report` dropped, clipped or did not use, or raise it under --strict.

    `show=False` (DDP ranks other than the main one) still raises under --strict, so every rank stops."""
    summary = report.problem_summary()
    if not summary:
        return
    run = _runs[-1]
    if run.strict:
        first = report.issues[0].offender()
        raise DataError(f"--strict: {first} ({summary}; run without --strict to skip them with a warning)")
    if not show or report.key in run.said:
        return
    run.said.add(report.key)
    for line in warning_lines(report, summary):
        print(line, file=sys.stderr)


def warning_lines(report: LabelReport, summary: str | None = None) -> list[str]:
    """`warning: <summary>` and the first offenders, indented (nothing when the data is clean)."""
    summary = report.problem_summary() if summary is None else summary
    if not summary:
        return []
    lines = [f"warning: {summary}"] + [f"  {i.offender()}" for i in report.issues[:SHOWN_OFFENDERS]]
    if len(report.issues) > SHOWN_OFFENDERS:
        lines.append(f"  ... and {len(report.issues) - SHOWN_OFFENDERS} more (--strict makes any of them an error)")
    return lines


def check_splits(data: PathLike | DataConfig, splits: Sequence[str] = ("train", "val")) -> None:
    """Scan these splits now and settle their reports: a command that writes before its loaders exist (the
    pipeline's run folder) calls this first under --strict, so bad data stops it before anything is written."""
    cfg = data if isinstance(data, DataConfig) else load_data_yaml(data)
    for split in splits:
        files = getattr(cfg, split)
        if files:
            settle_report(DetectionDataset(files, names=cfg.names, prefix=f"{split}: ", cache="no").report)
