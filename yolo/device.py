"""Device selection with YOLOv5's `--device` syntax: 'cpu', '0', '0,1', 'cuda:0' or '' (best available)."""

from __future__ import annotations

import os
from collections.abc import Mapping

import torch


class DeviceError(ValueError):
    """A --device value this machine cannot honour."""


def select_device(device: str | int | torch.device | None = "") -> torch.device:
    """Resolve a --device value; '0,1' selects the first listed GPU (DDP assigns the rest per rank)."""
    if isinstance(device, torch.device):
        return device
    spec = str(device if device is not None else "").strip().lower().replace("cuda:", "")
    if spec in ("cpu", "mps"):
        if spec == "mps" and not (hasattr(torch.backends, "mps") and torch.backends.mps.is_available()):
            raise DeviceError("--device mps: Apple MPS is not available on this machine")
        return torch.device(spec)
    if spec == "":
        return torch.device("cuda:0" if torch.cuda.is_available() else "cpu")
    ids = [s for s in spec.split(",") if s]
    if not all(s.isdigit() for s in ids):
        raise DeviceError(f"--device {device!r}: expected 'cpu', a GPU index like '0' or a list like '0,1'")
    if not torch.cuda.is_available():
        raise DeviceError(f"--device {device}: CUDA is not available here (use --device cpu)")
    n = torch.cuda.device_count()
    bad = [i for i in ids if int(i) >= n]
    if bad:
        raise DeviceError(f"--device {device}: GPU {bad[0]} does not exist ({n} visible)")
    local_rank = int(os.environ.get("LOCAL_RANK", -1))
    return torch.device(f"cuda:{ids[local_rank] if 0 <= local_rank < len(ids) else ids[0]}")


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask where the OS has one (taskset, a container's CPU set)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def choose_threads(
    requested: int | None, default: int, default_why: str, environ: Mapping[str, str] = os.environ
) -> tuple[int, str]:
    """How many intra-op threads to use, and why: --threads N when given; else OMP_NUM_THREADS when set (a job
    sharing the machine says what it may use); else `default`, the caller's best on an idle machine."""
    if requested:
        return int(requested), f"--threads {requested}"
    omp = environ.get("OMP_NUM_THREADS", "").strip()
    first = omp.split(",")[0].strip()  # nested OpenMP levels: "4,2" -> the outer 4
    if first.isdigit() and int(first) > 0:
        return int(first), f"OMP_NUM_THREADS={omp}"
    if omp:
        return default, f"{default_why}; OMP_NUM_THREADS={omp!r} is not a thread count"
    return default, default_why


def set_torch_threads(requested: int | None, default: int, default_why: str) -> tuple[int, str]:
    """Set torch's intra-op threads by `choose_threads`; returns (count, why) for the caller's one-line log."""
    n, why = choose_threads(requested, default, default_why)
    torch.set_num_threads(n)
    return n, why
