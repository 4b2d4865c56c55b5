"""Loaders over a DetectionDataset: batching, DDP samplers, seeding, worker start-up and the image cache."""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
from collections.abc import Sequence

import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import InputConvention
from yolo.data.check import settle_report
from yolo.data.dataset import DetectionDataset
from yolo.data.files import PathLike


def create_dataloader(
    image_files: Sequence[PathLike],
    img_size: int,
    batch_size: int,
    stride: int = 32,
    names: list[str] | None = None,
    augment: bool = False,
    hyp: dict | None = None,
    rect: bool = False,
    pad: float = 0.0,
    workers: int = 2,
    shuffle: bool = False,
    rank: int = -1,
    world_size: int = 1,
    seed: int = 0,
    prefix: str = "",
    rect_batches: str = "yolov5",
    cache: str = "auto",
    convention: InputConvention = DEFAULT_CONVENTION,
) -> tuple[DataLoader, DetectionDataset]:
    """Dataset + loader; DDP ranks get a DistributedSampler, rect batches are never shuffled.

    What the dataset's scan dropped, clipped or did not use is said once per split per run on stderr (main
    rank), or is an error under `data_checks(strict=True)`: see yolo.data.check. With DDP and
    rect, batch shapes are computed over groups of `batch_size * world_size` sorted images, so the interleaved
    sampler hands every rank images of the same group. `rect_batches="exact"` (one shape
    per batch, see `DetectionDataset._make_exact_rect_shapes`) is for a single process. `cache`: keep the decoded
    images in memory ('auto': for a loader without workers, when they fit AUTO_CACHE_BYTES and a quarter of the
    available memory). `convention`: the model's input convention (yolo.convention; stretching turns rect off).
    """
    rect = rect and not convention.stretch
    if rank != -1:
        rect_batches = "yolov5"
    if rect and shuffle:
        shuffle = False  # rect batches are aspect-ratio sorted; shuffling would break their shapes
    workers = max(0, min(workers, os.cpu_count() or 1))
    if cache == "auto" and workers > 0:
        cache = "no"  # workers already hide decoding: helmets fine-tune epochs ran ~8% slower with the cache
    group = batch_size * (world_size if rank != -1 and rect else 1)
    dataset = DetectionDataset(
        image_files,
        img_size,
        names=names,
        augment=augment,
        hyp=hyp,
        rect=rect,
        batch_size=group,
        stride=stride,
        pad=pad,
        prefix=prefix,
        rect_batches=rect_batches,
        cache=cache,
        convention=convention,
    )
    settle_report(dataset.report, show=rank in (-1, 0))
    _share_cache_with_workers(dataset, workers)
    if rect and rect_batches == "exact":
        return DataLoader(dataset, batch_sampler=dataset.batch_indices(), **_worker_options(workers)), dataset
    batch_size = max(1, min(batch_size, len(dataset)))
    return _sampled_loader(dataset, batch_size, workers, shuffle, rank, world_size, seed), dataset


def _share_cache_with_workers(dataset: DetectionDataset, workers: int) -> None:
    """Forked workers share the cache's pages; others would each unpickle a copy, so it moves to shared memory."""
    if workers and dataset._cached is not None and worker_start_method() != "fork":
        dataset._cached.share()


# Runtimes whose thread pools do not survive a fork: once one is loaded, workers start from a fork server (a clean
# process) instead of a fork of this one. Forked loader workers in a process where OpenVINO had run were followed
# by segmentation faults (docs/runtimes.md, Known limits); the dataset's image cache is shared either way.
FORK_UNSAFE_MODULES = frozenset({"openvino"})


def _worker_options(workers: int) -> dict:
    """DataLoader settings every loader here shares: collate, persistent workers that leave SIGTERM to main."""
    options = {
        "num_workers": workers,
        "collate_fn": DetectionDataset.collate_fn,
        "persistent_workers": workers > 0,
        "pin_memory": torch.cuda.is_available(),
        "worker_init_fn": leave_stop_signals_to_main,
    }
    if workers > 0 and FORK_UNSAFE_MODULES & set(sys.modules):
        options["multiprocessing_context"] = "forkserver"
    return options


def _sampled_loader(
    dataset: DetectionDataset, batch_size: int, workers: int, shuffle: bool, rank: int, world_size: int, seed: int
) -> DataLoader:
    """Fixed-size batches: a DistributedSampler under DDP, else the loader's own (seeded, per-rank) shuffle."""
    sampler = None
    if rank != -1:
        sampler = DistributedSampler(dataset, num_replicas=world_size, rank=rank, shuffle=shuffle, seed=seed)
    generator = torch.Generator()
    generator.manual_seed(seed + 1_000_003 * max(rank, 0))
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=shuffle and sampler is None,
        sampler=sampler,
        generator=generator,
        **_worker_options(workers),
    )


def worker_start_method() -> str:
    """How loader workers will start (fork, spawn or forkserver), without fixing the default as a side effect."""
    return multiprocessing.get_start_method(allow_none=True) or multiprocessing.get_all_start_methods()[0]


def leave_stop_signals_to_main(worker_id: int) -> None:
    """Loader workers ignore SIGTERM: a scheduler stops the whole process group, and a worker that died first
    would fail the main process's next batch before it could save its position; the main process stops them."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
