"""Device selection and DistributedDataParallel set-up for `torchrun --nproc_per_node N finetune.py ...`.

torchrun sets RANK / LOCAL_RANK / WORLD_SIZE; without them training runs in one process (rank -1).
The process group uses nccl on CUDA and gloo on CPU. Only rank 0 (or rank -1) writes files and scores.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

from yolo.device import select_device


@dataclass(frozen=True)
class DistInfo:
    rank: int = -1  # -1: not distributed
    local_rank: int = -1
    world_size: int = 1

    @property
    def distributed(self) -> bool:
        return self.rank != -1

    @property
    def is_main(self) -> bool:
        return self.rank in (-1, 0)


def dist_info_from_env() -> DistInfo:
    if "RANK" not in os.environ or int(os.environ.get("WORLD_SIZE", "1")) < 2:
        return DistInfo()
    return DistInfo(int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", 0)), int(os.environ["WORLD_SIZE"]))


def resolve_device(device: str, info: DistInfo) -> torch.device:
    """`--device` through `yolo.device.select_device` (which gives each DDP rank its LOCAL_RANK-th GPU)."""
    dev = select_device(device)
    if dev.type == "cuda":
        torch.cuda.set_device(dev)
    return dev


def init_distributed(info: DistInfo, device: torch.device) -> None:
    """Join the process group torchrun described (no-op outside DDP)."""
    if not info.distributed or dist.is_initialized():
        return
    backend = "nccl" if device.type == "cuda" else "gloo"
    dist.init_process_group(backend=backend, rank=info.rank, world_size=info.world_size)


def cleanup_distributed() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def wrap_ddp(model: nn.Module, info: DistInfo, device: torch.device) -> nn.Module:
    if not info.distributed:
        return model
    ids = [device.index] if device.type == "cuda" else None
    return nn.parallel.DistributedDataParallel(model, device_ids=ids, output_device=ids[0] if ids else None)


def all_finite(value: torch.Tensor, info: DistInfo) -> bool:
    """True when `value` is finite on every rank (one tiny all-reduce under DDP)."""
    ok = torch.isfinite(value).all().to(torch.float32).reshape(1)
    if info.distributed:
        dist.all_reduce(ok, op=dist.ReduceOp.MIN)
    return bool(ok.item())


def broadcast_object(obj, info: DistInfo, src: int = 0):
    """Send a picklable object from rank `src` to every rank (identity outside DDP)."""
    if not info.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]
