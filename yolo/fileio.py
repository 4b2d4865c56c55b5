"""Atomic file writes (a crash or Ctrl-C never leaves a half-written output behind), run folders, file hashes and
plain-data conversion for metadata that is saved."""

from __future__ import annotations

import hashlib
import io
import math
import os
import tempfile
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch


def atomic_write_bytes(path: str | Path, data: bytes | memoryview) -> Path:
    """Write to a temp file in the same folder, fsync, then rename over the target."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_text(path: str | Path, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_torch_save(obj: Any, path: str | Path) -> Path:
    buf = io.BytesIO()
    torch.save(obj, buf)
    return atomic_write_bytes(path, buf.getbuffer())


def increment_run_dir(project: str | Path, name: str = "exp", exist_ok: bool = False) -> Path:
    """project/name, or the first free project/name2, name3, ... (project/name itself with exist_ok)."""
    base = Path(project) / name
    if exist_ok or not base.exists():
        return base
    n = 2
    while (Path(project) / f"{name}{n}").exists():
        n += 1
    return Path(project) / f"{name}{n}"


def yaml_error_text(path: str | Path, err: Exception) -> str:
    """'<path>:<line>: malformed yaml (<problem>)': one line naming the file and where the parser gave up."""
    mark = getattr(err, "problem_mark", None)
    where = f":{mark.line + 1}" if mark is not None else ""
    problem = getattr(err, "problem", None) or str(err).splitlines()[0] or type(err).__name__
    return f"{path}{where}: malformed yaml ({problem})"


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file's bytes, read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def plain(v: Any, for_json: bool = False) -> Any:
    """Reduce metadata to plain types: str-keyed dicts, lists, str, numbers, bool, None.

    Checkpoints (for_json=False) keep tensors and non-finite floats, which `torch.load(weights_only=True)` accepts;
    JSON (for_json=True) gets NaN/inf as None and tensors/arrays as numbers or lists. Anything else becomes str.
    """
    if isinstance(v, Mapping):
        return {str(k): plain(x, for_json) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [plain(x, for_json) for x in v]
    if isinstance(v, Path):
        return str(v)
    if for_json and isinstance(v, float) and not math.isfinite(v):
        return None
    if isinstance(v, (str, int, float, bool)) or v is None or (not for_json and isinstance(v, torch.Tensor)):
        return v
    if hasattr(v, "item") and callable(v.item):
        try:
            return v.item()
        except (ValueError, RuntimeError):  # an array of more than one value
            pass
    if hasattr(v, "tolist"):
        return v.tolist()
    return str(v)


def check_writable(path: str | Path, flag: str, folder: bool = True) -> Path:
    """Prove that `path` (a folder, or with folder=False a file) can be created and written, before any work is
    done for it; nothing is left behind (folders made for the probe are removed again). Raises ValueError with
    one line naming `flag` otherwise, e.g. '--project /proc/x: cannot create or write there (No such file ...)'."""
    path = Path(path)
    target = path if folder else path.parent
    if not folder and path.is_dir():
        raise ValueError(f"{flag} {path}: is a folder, expected a file name")
    missing = []
    p = target
    while not p.exists() and p != p.parent:
        missing.append(p)
        p = p.parent
    made: list[Path] = []
    try:
        for d in reversed(missing):
            d.mkdir()
            made.append(d)
        fd, probe = tempfile.mkstemp(prefix=".write-probe.", dir=target)
        os.close(fd)
        os.unlink(probe)
    except OSError as e:
        raise ValueError(f"{flag} {path}: cannot create or write there ({e.strerror or type(e).__name__})") from None
    finally:
        for d in reversed(made):
            d.rmdir()
    return path
