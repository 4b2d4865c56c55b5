"""A training run's settings (`TrainOptions`), what it returns (`TrainResult`) and how it fails."""

from __future__ import annotations

import argparse
import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional, Union

from torch import nn

# what a --resume call may change; every other option is the run's own (from its last.pt)
RESUME_OVERRIDABLE = ("device", "workers", "threads", "cache", "quiet", "time_limit")


@dataclass
class TrainOptions:
    """Everything a training run needs; field names are the `finetune.py` flags (dashes -> underscores)."""

    data: str = ""
    weights: str = ""
    cfg: str = ""
    backbone: str = ""  # the authors' ImageNet ShuffleNetV2 x0.5 state_dict: a new yolo-fastestv2 model starts from it
    hyp: Optional[str] = None
    hyp_overrides: dict = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 16
    imgsz: int = 640
    device: str = ""
    workers: Optional[int] = None  # None: resolve_workers picks (0 on a small CPU, else 8)
    threads: Optional[int] = None  # torch threads; None: OMP_NUM_THREADS, else cores less workers (CPU)
    cache: str = "auto"  # training images kept decoded in memory: auto, ram or no (yolo.data.CACHE_MODES)
    optimizer: Optional[str] = None  # None: the model family's (yolo.fastestv2_loss.family_optimizer)
    cos_lr: bool = False
    schedule_start: int = 0  # this run is epochs [start, start + epochs) of a longer LR schedule ...
    schedule_epochs: int = 0  # ... of this many epochs (0: the schedule is this run's own --epochs)
    nbs: int = 64
    seed: int = 0
    project: str = "runs/finetune"
    name: str = "exp"
    exist_ok: bool = False
    resume: Union[str, bool] = False
    noval: bool = False
    val_every: int = 1
    close_mosaic: int = 0
    freeze_bn_stats: bool = False  # BatchNorms normalise with their running statistics while training (eval mode)
    freeze: list = field(default_factory=lambda: [0])
    new_head: bool = False  # a new Detect head even when the model has the data's class count
    sparsity: float = 0.0
    sparsity_schedule: str = "constant"
    sparsity_layers: str = "all"
    sparsity_target: dict = field(default_factory=dict)  # a PruneConfig dict: penalise only what that plan cuts
    amp: bool = True
    quiet: bool = False
    teacher: str = ""  # knowledge distillation from this (unpruned) model; gains: hyp distill*
    time_limit: float = 0.0  # minutes; stop after the epoch that crosses it (the LR schedule keeps --epochs)
    time_limit_fit: bool = False  # instead: lower --epochs (and the LR schedule) to what fits the time limit

    @classmethod
    def from_any(cls, opt: TrainOptions | argparse.Namespace | dict) -> TrainOptions:
        if isinstance(opt, cls):
            return dataclasses.replace(opt)
        values = vars(opt) if isinstance(opt, argparse.Namespace) else dict(opt)
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in values.items() if k in names})

    def plain(self) -> dict:
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in dataclasses.asdict(self).items()}


@dataclass
class TrainResult:
    run_dir: Optional[Path]
    last: Optional[Path]
    best: Optional[Path]
    epochs: int  # epochs completed in total (including those before a resume)
    optimizer_steps: int
    metrics: dict  # the last validation (map50, map, precision, recall, ...)
    best_fitness: float
    model: Optional[nn.Module] = field(default=None, repr=False)  # the EMA model (main process)


class TrainError(ValueError):
    """Options that cannot start a run; the message is one line."""


class NonFiniteLossError(RuntimeError):
    """The loss (or the weights) became NaN/inf; the run stopped and last.pt holds the last good state."""


class TrainingInterrupted(KeyboardInterrupt):
    """Ctrl-C or SIGTERM (`terminated`): last.pt was saved with the exact position; the message says how to
    continue."""

    def __init__(self, message: str, last: Path | None, terminated: bool = False):
        super().__init__(message)
        self.message, self.last, self.terminated = message, last, terminated

