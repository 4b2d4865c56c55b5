"""YOLO label files: parsing each row, clipping slight overshoots, and saying what was skipped or changed."""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from yolo.data.files import PathLike

EDGE_TOLERANCE = 0.05  # how far (normalised) a box may overshoot the image edge and still be clipped
ROUNDING_TOLERANCE = 1e-5  # overshoot from rounding labels to 6 decimals: clipped without being reported


@dataclass
class LabelIssue:
    """One label row that was skipped, clipped or dropped as a duplicate, or one image file that was not used
    (line 0 = the whole file). `kind` is the short reason a data check counts it under."""

    file: Path
    line: int
    reason: str
    action: str = "skipped"  # skipped | clipped | duplicate | unreadable | ignored
    kind: str = ""

    def __str__(self) -> str:
        return f"{self.file}:{self.line}: {self.action}: {self.reason}"

    def offender(self) -> str:
        """`file:line: reason` (`file: reason` for a whole file), as compilers name a bad line."""
        where = f"{self.file}:{self.line}" if self.line else str(self.file)
        return f"{where}: {self.reason.removeprefix(f'{self.file}: ')}"


@dataclass
class LabelReport:
    """What parsing a dataset found, so a user sees bad labels instead of silently training on them."""

    prefix: str = ""
    images: int = 0
    boxes: int = 0
    clipped: int = 0
    skipped: int = 0
    duplicates: int = 0
    polygons: int = 0
    unreadable: int = 0
    missing: int = 0  # images without a label file: background images
    empty: int = 0  # images with an empty label file: background images too
    label_files: int = 0  # label files found for the readable images
    ignored: int = 0  # files in an image folder that are not images (see dataset.non_image_files)
    issues: list[LabelIssue] = field(default_factory=list)
    key: str = ""  # identifies the scanned file list, so a split's problems are said once per run

    def summary(self) -> str:
        """One line for logs."""
        head = f"{self.prefix}: " if self.prefix else ""
        return (
            f"{head}{self.images} images, {self.boxes} boxes, {self.missing + self.empty} backgrounds "
            f"({self.missing} without label file), {self.clipped} boxes clipped, {self.skipped} rows skipped, "
            f"{self.duplicates} duplicates dropped, {self.polygons} polygons boxed, "
            f"{self.unreadable} unreadable images"
        )

    def problem_summary(self) -> str:
        """What was dropped, clipped or not used, counted by reason, on one line ('' when nothing was).

        e.g. `val: 6 images, 4 label files: 3 boxes dropped (1 wrong column count, 2 class outside 0..1),
        1 box clipped at the image edge, 1 image unreadable (cannot identify image file)`."""
        groups = (
            ("box dropped", "boxes dropped", lambda i: i.action in ("skipped", "duplicate") and i.line > 0),
            ("box clipped at the image edge", "boxes clipped at the image edge", lambda i: i.action == "clipped"),
            ("label file unreadable", "label files unreadable", lambda i: i.action == "skipped" and i.line == 0),
            ("image unreadable", "images unreadable", lambda i: i.action == "unreadable"),
            ("file in the image folder not an image", "files in the image folder not images",
             lambda i: i.action == "ignored"),
        )  # fmt: skip
        parts = [_counted(one, many, [i for i in self.issues if found(i)]) for one, many, found in groups]
        parts = [p for p in parts if p]
        if not parts:
            return ""
        name = self.prefix.strip().rstrip(":") or "data"
        return f"{name}: {self.images + self.unreadable} images, {self.label_files} label files: {', '.join(parts)}"


def _counted(one: str, many: str, issues: list[LabelIssue]) -> str:
    """`3 boxes dropped (2 wrong column count, 1 duplicate row)`, reasons in the order they first occur."""
    if not issues:
        return ""
    by_kind = Counter(i.kind for i in issues if i.kind)
    head = f"{len(issues)} {one if len(issues) == 1 else many}"
    return f"{head} ({', '.join(f'{n} {kind}' for kind, n in by_kind.items())})" if by_kind else head


class _RowError(ValueError):
    """A label row that cannot be used; the message is the reason, `kind` the short reason it is counted under."""

    def __init__(self, kind: str, message: str) -> None:
        super().__init__(message)
        self.kind = kind


def read_label_file(path: PathLike, nc: int | None) -> tuple[np.ndarray, list[LabelIssue], dict[str, int]]:
    """Parse a YOLO label file, keeping every usable row and explaining every row that was changed or dropped.

    Returns (labels (n, 5) float32 `cls xc yc w h`, issues, counters with clipped/skipped/duplicates/polygons).
    `nc=None` only checks that classes are non-negative integers.

    Coordinates outside the image (negative ones included): a box (or polygon) whose corners overshoot the
    normalised image [0, 1] by at most EDGE_TOLERANCE (5% of the side) is clipped to the image and counted as
    clipped (said when the overshoot is more than ROUNDING_TOLERANCE, what rounding to 6 decimals explains);
    one that overshoots more is dropped as "far outside the image" (usually pixel coordinates), and so is one
    with a zero or negative width or height, or nothing left inside the image after clipping.
    """
    path = Path(path)
    counters = {"clipped": 0, "skipped": 0, "duplicates": 0, "polygons": 0}
    issues: list[LabelIssue] = []
    try:
        text = path.read_text(encoding="utf-8")
    except (UnicodeDecodeError, OSError) as e:
        counters["skipped"] += 1
        issues.append(LabelIssue(path, 0, f"unreadable label file ({type(e).__name__})"))
        return np.zeros((0, 5), np.float32), issues, counters
    rows: list[np.ndarray] = []
    first_line: dict[tuple[float, ...], int] = {}
    for lineno, line in enumerate(text.splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        try:
            key, row, overshoot = _parse_row(parts, nc)
        except _RowError as e:
            counters["skipped"] += 1
            issues.append(LabelIssue(path, lineno, str(e), kind=e.kind))
            continue
        if key in first_line:
            counters["duplicates"] += 1
            issues.append(
                LabelIssue(path, lineno, f"exact duplicate of line {first_line[key]}", "duplicate", "duplicate row")
            )
            continue
        first_line[key] = lineno
        counters["polygons"] += len(parts) > 5
        if overshoot > ROUNDING_TOLERANCE:
            counters["clipped"] += 1
            reason = f"box overshoots the image edge by {overshoot:.3g}"
            issues.append(LabelIssue(path, lineno, reason, "clipped"))
        rows.append(row)
    labels = np.stack(rows).astype(np.float32) if rows else np.zeros((0, 5), np.float32)
    return labels, issues, counters


def _parse_row(parts: list[str], nc: int | None) -> tuple[tuple[float, ...], np.ndarray, float]:
    """One row -> (exact values for duplicate detection, clipped `cls xc yc w h`, overshoot beyond [0, 1])."""
    n = len(parts)
    if n != 5 and (n < 7 or n % 2 == 0):
        expected = "expected 5 (cls xc yc w h) or an odd count >= 7 (cls x1 y1 ...)"
        raise _RowError("wrong column count", f"wrong column count {n}: {expected}")
    try:
        vals = [float(p) for p in parts]
    except ValueError:
        bad = next(p for p in parts if not _is_float(p))
        raise _RowError("non-numeric value", f"non-numeric value {bad!r}") from None
    if not all(math.isfinite(v) for v in vals):
        raise _RowError("non-numeric value", "non-numeric value (nan or inf)")
    c = vals[0]
    if not c.is_integer() or c < 0 or (nc is not None and c >= nc):
        kind = f"class outside 0..{nc - 1}" if c.is_integer() and nc is not None else "class not an integer >= 0"
        raise _RowError(kind, f"class {parts[0]} is not an integer in [0, {nc if nc is not None else 'inf'})")
    if n == 5:
        xc, yc, w, h = vals[1:]
        if w <= 0 or h <= 0:
            raise _RowError("zero or negative size", f"zero or negative box size w={parts[3]} h={parts[4]}")
        x1, y1, x2, y2 = xc - w / 2, yc - h / 2, xc + w / 2, yc + h / 2
    else:
        xs, ys = vals[1::2], vals[2::2]
        x1, y1, x2, y2 = min(xs), min(ys), max(xs), max(ys)
    overshoot = max(0.0, -x1, -y1, x2 - 1, y2 - 1)
    if overshoot > EDGE_TOLERANCE:
        raise _RowError(
            "far outside the image",
            f"box ({x1:.4g}, {y1:.4g}, {x2:.4g}, {y2:.4g}) is far outside the normalised image [0, 1] "
            f"(more than {EDGE_TOLERANCE} beyond the edge; pixel coordinates?)",
        )
    x1, y1, x2, y2 = (min(max(v, 0.0), 1.0) for v in (x1, y1, x2, y2))
    if x2 - x1 <= 0 or y2 - y1 <= 0:
        raise _RowError("zero or negative size", "zero or negative box size after clipping to the image")
    row = np.array([c, (x1 + x2) / 2, (y1 + y2) / 2, x2 - x1, y2 - y1], np.float64)
    return tuple(vals), row, overshoot


def _is_float(s: str) -> bool:
    try:
        float(s)
    except ValueError:
        return False
    return True
