"""The YOLOv5 training engine: fine-tuning, transfer learning and the sparse stage share this one loop.

`train(opt)` builds everything from a `TrainOptions` (or the argparse Namespace of `finetune.py`) and returns
a `TrainResult`. Behaviour follows YOLOv5's train.py: three parameter groups, warm-up with np.interp,
accumulation to a nominal batch, linear or cosine LR per epoch, EMA, AMP on CUDA, gradient clipping, DDP.

Nothing is lost: `weights/last.pt` is written atomically after every epoch and on Ctrl-C (with the exact
position); `--resume` restores weights, EMA, optimizer, LR position, optimizer-step counter, callbacks and
RNG state. A non-finite loss stops the run before the weights or last.pt are touched.

The `Trainer` is put together from its parts: `finetune.setup` (options, data, model and head, loaders,
optimiser, teacher, run folder), `finetune.loop` (the epochs), `finetune.checkpoints` (last.pt / best.pt and
resume) and `finetune.results` (the results row and printed lines); options and errors are `finetune.options`.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from finetune import ddp
from finetune.callbacks import Callbacks
from finetune.checkpoints import RunCheckpoints, find_resume_checkpoint, finished_run, resolve_resume
from finetune.ema import ModelEMA
from finetune.loop import EpochLoop, freeze_bn_statistics
from finetune.options import (
    RESUME_OVERRIDABLE,
    NonFiniteLossError,
    TrainError,
    TrainingInterrupted,
    TrainOptions,
    TrainResult,
)
from finetune.progress import log
from finetune.results import LOSS_NAMES, METRIC_KEYS, fitness, format_row
from finetune.runs import ResultsLog
from finetune.setup import RunSetup, freeze_layers, resolve_workers, set_training_threads
from finetune.state import init_seeds
from yolo.errors import Terminated
from yolo.hyp import load_hyp

__all__ = [
    "LOSS_NAMES", "METRIC_KEYS", "RESUME_OVERRIDABLE", "NonFiniteLossError", "TrainError", "TrainOptions",
    "TrainResult", "Trainer", "TrainingInterrupted", "find_resume_checkpoint", "finished_run", "fitness",
    "format_row", "freeze_bn_statistics", "freeze_layers", "resolve_workers", "set_training_threads", "train",
]


def train(
    opt: TrainOptions | argparse.Namespace | dict,
    callbacks: list | tuple = (),
    loss_hooks: list | tuple = (),
) -> TrainResult:
    """Run one training (fine-tuning, transfer learning or sparse training) and return where it went."""
    return Trainer(TrainOptions.from_any(opt), callbacks, loss_hooks).run()


class Trainer(RunSetup, EpochLoop, RunCheckpoints):
    """State of one run; callbacks receive it. Public attributes: model (maybe DDP), bare_model, ema,
    optimizer, epoch, epochs, start_epoch, batch_index, nb, ni, optimizer_steps, run_dir, is_main, hyp,
    sparsity (the sparse stage's callback, first in `callbacks`)."""

    def __init__(self, opt: TrainOptions, callbacks=(), loss_hooks=()):
        self.opt = opt
        self.callbacks = Callbacks(callbacks)  # the sparsity callback joins first in setup, from the run's options
        self.loss_hooks: list[Callable] = list(loss_hooks)
        self.dist = ddp.dist_info_from_env()
        self.ready = False
        self.resume = None  # finetune.checkpoints.Resume of a --resume run
        self.run_dir: Path | None = None
        self.ema: ModelEMA | None = None
        self.epoch = self.start_epoch = self.start_iter = 0
        self.batch_index = self.ni = 0
        self.last_opt_step = -1
        self.optimizer_steps = 0
        self.best_fitness = -1.0
        self.metrics: dict = {}
        self.loss_items = torch.zeros(3)
        self.loss_names: tuple[str, ...] = LOSS_NAMES  # plus one column per loss hook with a `loss_name`
        self.distiller = None
        self.train_seconds = 0.0  # training time before this process (resume), for --time-limit
        self.t0 = time.time()
        self.out_of_time = False
        self.position = (0, 0)  # (epoch, batch) a resume continues from
        self.mloss, self.seen = torch.zeros(3), 0  # the epoch's running mean loss over `seen` batches
        self.position_loss = (self.mloss, 0)  # the running mean at `position`
        self.position_extras: dict | None = None  # BatchNorm buffers and RNG state at a mid-epoch `position`

    @property
    def is_main(self) -> bool:
        return self.dist.is_main

    @property
    def bare_model(self) -> nn.Module:
        return self.model.module if isinstance(self.model, nn.parallel.DistributedDataParallel) else self.model

    @property
    def epochs(self) -> int:
        return self.opt.epochs

    @property
    def last_path(self) -> Path | None:
        return self.run_dir / "weights" / "last.pt" if self.run_dir else None

    @property
    def best_path(self) -> Path | None:
        return self.run_dir / "weights" / "best.pt" if self.run_dir else None

    def run(self) -> TrainResult:
        try:
            self.setup()
            self.callbacks.run("on_train_start", self)
            epoch = self.start_epoch
            while epoch < self.epochs:  # --time-limit-fit may lower self.epochs as the run goes
                self.train_epoch(epoch)
                self.end_epoch(epoch)
                epoch += 1
                if self.out_of_time and epoch < self.epochs:
                    log(f"--time-limit {self.opt.time_limit:g} min reached after epoch {epoch - 1}: stopping "
                        f"({epoch} of {self.epochs} epochs; resume with a larger --time-limit to continue)",
                        self.is_main)
                    break
            result = self.result()
            self.callbacks.run("on_train_end", self, result)
            return result
        except KeyboardInterrupt as e:
            if not self.ready or isinstance(e, TrainingInterrupted):
                raise
            raise self.save_interrupted(terminated=isinstance(e, Terminated)) from None
        except NonFiniteLossError as e:
            log(f"error: {e}", self.is_main)
            raise
        finally:
            ddp.cleanup_distributed()

    def setup(self) -> None:
        """Everything before the first epoch, in an order where nothing is written until all inputs are good."""
        self.opt, self.resume = resolve_resume(self.opt)  # a resumed run trains with the options it started with
        self._check_options()
        self._setup_device()
        self.hyp = self.resume.state["hyp"] if self.resume else load_hyp(self.opt.hyp, self.opt.hyp_overrides)
        self._setup_data()
        self._setup_model()
        self._setup_sparsity()
        self._setup_loaders()
        self._setup_optimisation()
        self._setup_teacher()
        self._setup_run_dir()  # last: bad data, weights or a bad teacher leave no run folder behind
        if self.resume:
            self._restore(self.resume.state)
        self.model = ddp.wrap_ddp(self.model, self.dist, self.device)
        self.results = ResultsLog(self.run_dir / "results.csv") if self.run_dir else None
        if self.results is not None and self.resume:
            self.results.load(before_epoch=self.start_epoch)
        self.position = (self.start_epoch, self.start_iter)
        self.loss_names = LOSS_NAMES + tuple(h.loss_name for h in self.loss_hooks if hasattr(h, "loss_name"))
        self.loss_items = torch.zeros(len(self.loss_names))
        self.t0 = time.time()
        self.ready = True
        self._log_start()

    def _setup_device(self) -> None:
        """Device, process group, loader workers and CPU threads, seeds and AMP."""
        self.device = ddp.resolve_device(self.opt.device, self.dist)
        if "," in str(self.opt.device) and not self.dist.distributed:
            log(f"--device {self.opt.device}: one process uses {self.device}; for all GPUs run "
                "torchrun --nproc_per_node N finetune.py ...", self.is_main)
        ddp.init_distributed(self.dist, self.device)
        # resolved here, not saved in the run: a resume on another machine picks its own
        self.workers = resolve_workers(self.opt.workers, self.device, self.dist.world_size)
        n, why = set_training_threads(self.opt.threads, self.device, self.workers, self.dist.world_size)
        log(f"using {n} torch thread{'' if n == 1 else 's'} ({why})", self.is_main and not self.opt.quiet)
        init_seeds(self.opt.seed + 1 + self.dist.rank)
        self.amp = self.opt.amp and self.device.type == "cuda"
