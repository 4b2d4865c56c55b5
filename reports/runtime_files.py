"""Writing an export folder atomically, and the metadata every runtime's sidecar carries.

OpenVINO and ncnn models are several files (graph + weights + metadata yaml) in one folder, as the official
exports lay them out. The folder is built in a hidden temp folder next to its final place and renamed into place
only when complete, so a failed or interrupted export leaves either the previous folder or none, never half.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from reports.export import check_out_dir
from reports.onnx_meta import read_metadata
from reports.runtime_common import package_version

SKIP_KEYS = ("dynamic",)  # the runtimes here take a fixed input


@contextlib.contextmanager
def staging_dir(folder: Path) -> Iterator[Path]:
    """A hidden temp folder beside `folder` (same filesystem, so the final rename is atomic); removed on exit."""
    parent = check_out_dir(Path(folder).parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".{Path(folder).name}.", dir=parent))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(tmp: Path, folder: Path) -> Path:
    """Rename the finished `tmp` to `folder`, replacing an earlier export of the same name."""
    for f in tmp.iterdir():
        f.chmod(0o644)  # mkstemp-style temp files are 0600; a model is for reading
    tmp.chmod(0o755)
    old = None
    if folder.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{folder.name}.old.", dir=folder.parent))
        os.replace(folder, old / folder.name)
    os.replace(tmp, folder)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return folder


def runtime_metadata(
    onnx_path: Path, fmt: str, precision: str, converter: str, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    """The ONNX file's metadata for a sidecar yaml: names as an {index: name} dict (the official YOLOv5 form),
    stride, imgsz and provenance, plus the format, precision and the converter's version."""
    md = {k: v for k, v in read_metadata(onnx_path).items() if k not in SKIP_KEYS}
    names = md.get("names") or []
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    out: dict[str, Any] = {"stride": int(md.pop("stride", 32)), "names": {i: str(n) for i, n in enumerate(names)}}
    md.pop("names", None)
    out.update(md)
    out.update(format=fmt, precision=precision, source=onnx_path.name)
    out["converter"] = {converter: package_version(converter)}
    out.update(extra or {})
    return out
