"""Atomic file writes: a crash or Ctrl-C never leaves a half-written output behind."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path
from typing import Any


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
    import torch

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
