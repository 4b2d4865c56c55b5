"""The YOLOv5 training engine: fine-tuning, transfer learning and the sparse stage share this one loop.

`train(opt)` builds everything from a `TrainOptions` (or the argparse Namespace of `finetune.py`) and returns
a `TrainResult`. Behaviour follows YOLOv5's train.py: three parameter groups, warm-up with np.interp,
accumulation to a nominal batch, linear or cosine LR per epoch, EMA, AMP on CUDA, gradient clipping, DDP.

Nothing is lost: `weights/last.pt` is written atomically after every epoch and on Ctrl-C (with the exact
position); `--resume` restores weights, EMA, optimizer, LR position, optimizer-step counter, callbacks and
RNG state. A non-finite loss stops the run before the weights or last.pt are touched.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional, Union

import torch
from torch import nn

from finetune import ddp
from finetune.callbacks import Callbacks
from finetune.ema import ModelEMA
from finetune.hyp import dump_hyp, load_hyp
from finetune.optim import (
    apply_warmup,
    build_optimizer,
    clip_gradients,
    lr_lambda,
    nominal_accumulate,
    set_epoch_lr,
    warmup_iters,
)
from finetune.progress import EpochProgress, is_tty, log
from finetune.runs import ResultsLog, increment_run_dir, plot_results, write_yaml
from finetune.state import init_seeds, rng_state, set_rng_state
from sparsity.callback import SparsityCallback
from yolo.checkpoint import load_model, read_checkpoint, save_checkpoint
from yolo.data import create_dataloader, load_data_yaml
from yolo.device import usable_cores
from yolo.errors import Terminated, deferred_interrupts, raise_if_terminated
from yolo.loss import YoloLoss, scale_loss_gains
from yolo.model import build_model, reset_detect_head
from yolo.val import build_val_loader, evaluate

LOSS_NAMES = ("train/box_loss", "train/obj_loss", "train/cls_loss")
METRIC_KEYS = (
    ("metrics/precision", "precision"),
    ("metrics/recall", "recall"),
    ("metrics/mAP_0.5", "map50"),
    ("metrics/mAP_0.5:0.95", "map"),
)
RESUME_OVERRIDABLE = ("device", "workers", "cache", "quiet", "time_limit")


@dataclass
class TrainOptions:
    """Everything a training run needs; field names are the `finetune.py` flags (dashes -> underscores)."""

    data: str = ""
    weights: str = ""
    cfg: str = ""
    hyp: Optional[str] = None
    hyp_overrides: dict = field(default_factory=dict)
    epochs: int = 100
    batch_size: int = 16
    imgsz: int = 640
    device: str = ""
    workers: Optional[int] = None  # None: resolve_workers picks (0 on a small CPU, else 8)
    cache: str = "auto"  # training images kept decoded in memory: auto, ram or no (yolo.data.CACHE_MODES)
    optimizer: str = "SGD"
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


def freeze_bn_statistics(model: nn.Module) -> None:
    """Every BatchNorm to eval mode (its scale and shift still learn): training then sees the function the model
    computes at inference instead of one normalised by small-batch statistics. Without batch normalisation to
    absorb large updates it needs a low LR: on a pruned, re-fitted model at the fine-tune LR it diverged."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


def fitness(metrics: dict) -> float:
    """YOLOv5's model fitness: 0.1 * mAP50 + 0.9 * mAP50-95."""
    return 0.1 * float(metrics.get("map50", 0.0)) + 0.9 * float(metrics.get("map", 0.0))


def train(
    opt: TrainOptions | argparse.Namespace | dict,
    callbacks: list | tuple = (),
    loss_hooks: list | tuple = (),
) -> TrainResult:
    """Run one training (fine-tuning, transfer learning or sparse training) and return where it went."""
    return Trainer(TrainOptions.from_any(opt), callbacks, loss_hooks).run()


class Trainer:
    """State of one run; callbacks receive it. Public attributes: model (maybe DDP), bare_model, ema,
    optimizer, epoch, epochs, start_epoch, batch_index, nb, ni, optimizer_steps, run_dir, is_main, hyp."""

    def __init__(self, opt: TrainOptions, callbacks=(), loss_hooks=()):
        self.opt = opt
        target = {"imgsz": opt.imgsz, **opt.sparsity_target} if opt.sparsity_target else None
        sparse = SparsityCallback(opt.sparsity, opt.sparsity_schedule, opt.sparsity_layers, target)
        self.callbacks = Callbacks([sparse, *callbacks])
        self.loss_hooks: list[Callable] = list(loss_hooks)
        self.dist = ddp.dist_info_from_env()
        self.ready = False
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
        self.resume_state: dict | None = None

    # ------------------------------------------------------------------ properties

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

    # ------------------------------------------------------------------ run

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
        self._resolve_resume()
        self.device = ddp.resolve_device(self.opt.device, self.dist)
        if "," in str(self.opt.device) and not self.dist.distributed:
            log(f"--device {self.opt.device}: one process uses {self.device}; for all GPUs run "
                "torchrun --nproc_per_node N finetune.py ...", self.is_main)
        ddp.init_distributed(self.dist, self.device)
        # resolved here, not saved in the run: a resume on another machine picks its own
        self.workers = resolve_workers(self.opt.workers, self.device, self.dist.world_size)
        if self.device.type == "cpu":
            set_cpu_threads(self.workers, self.dist.world_size)
        init_seeds(self.opt.seed + 1 + self.dist.rank)
        self.amp = self.opt.amp and self.device.type == "cuda"
        self.hyp = self.resume_state["hyp"] if self.resume_state else load_hyp(self.opt.hyp, self.opt.hyp_overrides)
        self._check_options()
        self._setup_data()
        self._setup_model()
        self._setup_loaders()
        self._setup_optimisation()
        self._setup_teacher()
        self._setup_run_dir()  # last: bad data, weights or a bad teacher leave no run folder behind
        if self.resume_state:
            self._restore(self.resume_state)
        self.model = ddp.wrap_ddp(self.model, self.dist, self.device)
        self.results = ResultsLog(self.run_dir / "results.csv") if self.run_dir else None
        if self.results is not None and self.resume_state:
            self.results.load(before_epoch=self.start_epoch)
        self.position = (self.start_epoch, self.start_iter)
        self.loss_names = LOSS_NAMES + tuple(h.loss_name for h in self.loss_hooks if hasattr(h, "loss_name"))
        self.loss_items = torch.zeros(len(self.loss_names))
        self.t0 = time.time()
        self.ready = True
        self._log_start()

    # ------------------------------------------------------------------ set-up pieces

    def _resolve_resume(self) -> None:
        if not self.opt.resume:
            return
        path = find_resume_checkpoint(self.opt.resume, self.opt.project)
        ckpt = read_checkpoint(path)
        state = ckpt.get("train_state")
        if not state:
            raise TrainError(f"{path}: holds no training state to resume (a best.pt or a final export?)")
        saved = TrainOptions.from_any(state["opt"])
        defaults = TrainOptions()
        for k in RESUME_OVERRIDABLE:  # the run's own settings, unless this call sets them explicitly
            if getattr(self.opt, k) != getattr(defaults, k):
                setattr(saved, k, getattr(self.opt, k))
        saved.resume = str(path)
        if state["epoch"] >= saved.epochs:
            raise TrainError(f"{path}: training to {saved.epochs} epochs is finished; nothing to resume")
        self.opt = saved
        self.resume_state = state
        self.resume_path = path
        self.run_dir_resumed = path.parent.parent if path.parent.name == "weights" else path.parent

    def _check_options(self) -> None:
        o = self.opt
        if not o.data:
            raise TrainError("--data is required (a data yaml)")
        if not (o.weights or o.cfg):
            raise TrainError("give --weights (a checkpoint) or --cfg (a model yaml to start from scratch)")
        if o.batch_size % self.dist.world_size:
            raise TrainError(f"--batch-size {o.batch_size} is not a multiple of the {self.dist.world_size} processes")
        if o.epochs < 1 or o.val_every < 1 or o.nbs < 1:
            raise TrainError("--epochs, --val-every and --nbs must be >= 1")
        if o.schedule_start < 0 or o.schedule_epochs < 0 or (
                o.schedule_epochs and o.schedule_start + o.epochs > o.schedule_epochs):
            raise TrainError(f"--schedule-start {o.schedule_start} --schedule-epochs {o.schedule_epochs}: this run's "
                             f"{o.epochs} epochs must fit inside the schedule (start + epochs <= schedule epochs)")
        if o.schedule_start and not o.schedule_epochs:
            raise TrainError(f"--schedule-start {o.schedule_start} needs --schedule-epochs (the whole schedule's "
                             "length)")
        if o.time_limit < 0:
            raise TrainError(f"--time-limit {o.time_limit}: minutes must be >= 0 (0 = no limit)")

    def _setup_run_dir(self) -> None:
        run_dir = None
        if self.is_main:
            if self.resume_state:
                run_dir = self.run_dir_resumed
            else:
                run_dir = increment_run_dir(self.opt.project, self.opt.name, self.opt.exist_ok)
            self._guard_input_weights(run_dir)
            (run_dir / "weights").mkdir(parents=True, exist_ok=True)
            write_yaml(run_dir / "args.yaml", self.opt.plain())
            dump_hyp(self.hyp, run_dir / "hyp.yaml")
        run_dir = ddp.broadcast_object(str(run_dir) if run_dir else None, self.dist)
        self.run_dir = Path(run_dir) if (run_dir and self.is_main) else None

    def _guard_input_weights(self, run_dir: Path) -> None:
        if not self.opt.weights or self.resume_state:
            return
        src = Path(self.opt.weights).resolve()
        for out in (run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"):
            if out.resolve() == src:
                raise TrainError(f"the run would overwrite its input weights {self.opt.weights}; use another --name")

    def _setup_data(self) -> None:
        self.data_cfg = load_data_yaml(self.opt.data)

    def _setup_model(self) -> None:
        model, meta = self._load_initial_model()
        nc, names = self.data_cfg.nc, list(self.data_cfg.names)
        self.new_head = False
        if model.nc != nc:
            log(f"transfer learning: the model has {model.nc} classes, {self.opt.data} has {nc}: "
                "new Detect head", self.is_main)
            reset_detect_head(model, nc, names)
            self.new_head = True
        model.names = names
        freeze_layers(model, self.opt.freeze)
        self.model = model.to(self.device)
        self.source_meta = {"history": list(meta.get("history") or []), "source": dict(meta.get("source") or {})}
        if self.resume_state:
            self.source_meta = dict(self.resume_state["source_meta"])
            self.new_head = bool(self.resume_state.get("new_head", False))

    def _load_initial_model(self) -> tuple[nn.Module, dict]:
        if self.resume_state:
            model, meta = load_model(self.resume_path)  # EMA weights; training weights restored later
            return model, meta
        if self.opt.weights:
            if self.opt.cfg:
                log(f"--weights given: --cfg {self.opt.cfg} is ignored", self.is_main)
            return load_model(self.opt.weights)
        model = build_model(self.opt.cfg, nc=self.data_cfg.nc)
        return model, {"source": {"cfg": str(self.opt.cfg)}, "history": []}

    def _setup_loaders(self) -> None:
        o, gs = self.opt, self.grid_size
        self.train_loader, self.dataset = create_dataloader(
            self.data_cfg.train, o.imgsz, o.batch_size // self.dist.world_size, stride=gs,
            names=self.data_cfg.names, augment=True, hyp=self.hyp, workers=self.workers, shuffle=True,
            rank=self.dist.rank, world_size=self.dist.world_size, seed=o.seed, prefix="train: ", cache=o.cache,
        )
        self.nb = len(self.train_loader)
        self.val_loader = None
        if self.is_main:
            self.val_loader = build_val_loader(
                self.data_cfg, "val", o.imgsz, max(o.batch_size // self.dist.world_size * 2, 1), gs,
                workers=self.workers,
            )

    @property
    def grid_size(self) -> int:
        return max(int(self.bare_model.stride.max()), 32)

    def _setup_optimisation(self) -> None:
        o, hyp, model = self.opt, self.hyp, self.bare_model
        self.nominal_accumulate = nominal_accumulate(o.nbs, o.batch_size)
        self.accumulate = self.nominal_accumulate
        decay = hyp["weight_decay"] * o.batch_size * self.accumulate / o.nbs
        self.optimizer = build_optimizer(model, o.optimizer, hyp["lr0"], hyp["momentum"], decay)
        self.lf = self._schedule(o.epochs)
        self.nw = warmup_iters(hyp["warmup_epochs"], self.nb)
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=self.amp)
        self.ema = ModelEMA(model) if self.is_main else None
        detect = model.model[-1]
        self.compute_loss = YoloLoss(model, scale_loss_gains(hyp, detect.nl, detect.nc, o.imgsz))

    def _setup_teacher(self) -> None:
        """--teacher: every process holds its own frozen copy (never DDP-wrapped) on its device."""
        if not self.opt.teacher:
            return
        from finetune.distill import Distiller

        self.distiller = Distiller.from_weights(
            self.opt.teacher, self.bare_model, self.hyp, self.opt.imgsz, self.device, self.compute_loss.balance
        )
        self.loss_hooks.append(self.distiller)
        self._log_teacher()

    def _log_teacher(self) -> None:
        g = self.distiller.gains
        log(f"distillation from {self.opt.teacher}: gain {self.hyp['distill']:g} (scaled obj {g['obj']:.3g}, "
            f"cls {g['cls']:.3g}, box {g['box']:.3g})", self.is_main and not self.opt.quiet)

    def _restore(self, state: dict) -> None:
        model = self.bare_model
        if self.ema is not None:
            self.ema.ema.load_state_dict(model.state_dict())  # the file's primary weights are the EMA
            self.ema.updates = int(state["ema_updates"])
        model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.start_epoch, self.start_iter = int(state["epoch"]), int(state["iter"])
        self.last_opt_step = int(state["last_opt_step"])
        self.optimizer_steps = int(state["optimizer_steps"])
        self.best_fitness = float(state["best_fitness"])
        self.metrics = dict(state.get("metrics") or {})
        self.callbacks.load_state_dict(state.get("callbacks") or {})
        self.train_seconds = float(state.get("train_seconds", 0.0))
        if int(state.get("world_size", 1)) == self.dist.world_size:
            set_rng_state(state["rng"])
        if int(state.get("nb", self.nb)) != self.nb:
            log(f"warning: {self.nb} batches per epoch now, {state['nb']} when the run started", self.is_main)
        log(f"resuming {self.resume_path} from epoch {self.start_epoch}, batch {self.start_iter} "
            f"({self.optimizer_steps} optimizer steps done)", self.is_main)

    def _log_start(self) -> None:
        o = self.opt
        aim = f", targeted at {_target_text(o.sparsity_target)}" if o.sparsity_target else ""
        stage = f"sparse training (sr {o.sparsity}, {o.sparsity_schedule}{aim})" if o.sparsity > 0 else "training"
        log(f"{stage}: {o.epochs} epochs, batch {o.batch_size} (accumulate to {o.nbs}), {self.nb} batches/epoch, "
            f"imgsz {o.imgsz}, {o.optimizer}, device {self.device}"
            f"{f' x{self.dist.world_size} processes' if self.dist.distributed else ''}; results in {self.run_dir}",
            self.is_main and not o.quiet)

    # ------------------------------------------------------------------ epochs

    def train_epoch(self, epoch: int) -> None:
        self.epoch = epoch
        self.model.train()
        if self.opt.freeze_bn_stats:
            freeze_bn_statistics(self.model)
        self._maybe_close_mosaic(epoch)
        set_epoch_lr(self.optimizer, self.lf(epoch))
        start = self.start_iter if epoch == self.start_epoch else 0
        self.position = (epoch, start)
        self.optimizer.zero_grad()
        self.callbacks.run("on_epoch_start", self)
        self.mloss, self.seen = self._epoch_loss_so_far(start)
        self.position_loss = (self.mloss.clone(), self.seen)
        self.epoch_t0 = time.time()
        live = is_tty() and self.is_main and not self.opt.quiet
        extra = [n.split("/")[-1].replace("_loss", "") for n in self.loss_names[len(LOSS_NAMES):]]
        with EpochProgress(live, self.nb, f"epoch {epoch}/{self.epochs - 1}", start, extra) as bar:
            for i, (imgs, targets, _paths, _shapes) in enumerate(self._batches(epoch, start), start):
                self.train_step(i, imgs, targets)
                raise_if_terminated()
                bar.update(self.mloss, int(targets.shape[0]), int(imgs.shape[-1]))
                self.callbacks.run("on_batch_end", self)

    def _epoch_loss_so_far(self, start: int) -> tuple[torch.Tensor, int]:
        """The running mean loss and batch count an epoch starts from: those saved with the position when a
        run resumes mid-epoch, so the epoch's results row still averages every batch, not only the later ones."""
        saved = (self.resume_state or {}).get("epoch_loss") if start else None
        if saved and len(saved["mean"]) == len(self.loss_names):
            return torch.tensor(saved["mean"], dtype=torch.float32), int(saved["seen"])
        return torch.zeros(len(self.loss_names)), 0

    def train_step(self, i: int, imgs: torch.Tensor, targets: torch.Tensor) -> None:
        self.batch_index, self.ni = i, i + self.nb * self.epoch
        ni = self.ni
        if self.nw and ni <= self.nw:
            self.accumulate = apply_warmup(
                self.optimizer, ni, self.nw, self.lf(self.epoch), self.hyp, self.opt.nbs, self.opt.batch_size
            )
        imgs = imgs.to(self.device, non_blocking=True).float() / 255
        targets = targets.to(self.device)
        with torch.autocast(self.device.type, enabled=self.amp):
            preds = self.model(imgs)
            loss, items = self.compute_loss(preds, targets)
            for hook in self.loss_hooks:
                extra = hook(self, imgs, targets, preds)
                if extra is not None:
                    loss = loss + extra
            if self.dist.distributed:
                loss = loss * self.dist.world_size  # DDP averages gradients over processes
        if not ddp.all_finite(loss.detach(), self.dist):
            raise NonFiniteLossError(
                f"loss is {loss.sum().item()} at epoch {self.epoch}, iteration {i} of {self.nb} "
                f"(global {ni}); training stopped, last good checkpoint kept: {self.last_path or 'rank 0'}"
            )
        self.scaler.scale(loss.sum()).backward()
        extra = [h.last_item.reshape(1).cpu() for h in self.loss_hooks if hasattr(h, "loss_name")]
        self.loss_items = torch.cat([items.detach().cpu(), *extra]) if extra else items.detach()
        self.mloss = (self.mloss * self.seen + self.loss_items.cpu()) / (self.seen + 1)
        self.seen += 1
        if ni - self.last_opt_step >= self.accumulate:
            self.optimizer_step()
            self.last_opt_step = ni
            self.position = (self.epoch, i + 1)
            self.position_loss = (self.mloss.clone(), self.seen)  # batches after this step are redone on resume

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        clip_gradients(self.model, max_norm=10.0)
        self.callbacks.run("on_before_optimizer_step", self)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.optimizer.zero_grad()
        if self.ema is not None:
            self.ema.update(self.model)
        self.optimizer_steps += 1
        self.callbacks.run("on_optimizer_step", self)

    def end_epoch(self, epoch: int) -> None:
        row: dict[str, Any] = {"epoch": epoch}
        row.update({k: float(v) for k, v in zip(self.loss_names, self.mloss)})
        row.update({f"lr/pg{j}": g["lr"] for j, g in enumerate(self.optimizer.param_groups)})
        scored = is_best = False
        self._apply_time_limit(epoch)
        if self.is_main:
            self.ema.update_attr(self.bare_model)
            due = not self.opt.noval and (epoch + 1) % self.opt.val_every == 0
            scored = due or epoch + 1 == self.epochs or self.out_of_time
            if scored:
                is_best = self._score()
            row.update({k: self.metrics.get(m, math.nan) if scored else math.nan for k, m in METRIC_KEYS})
            row["fitness"] = fitness(self.metrics) if scored else math.nan
        row["optimizer_steps"] = self.optimizer_steps
        self.callbacks.run("on_epoch_end", self, row)
        if self.is_main:
            self._write_epoch(epoch, row, is_best, scored)
        self.position = (epoch + 1, 0)

    def elapsed_seconds(self) -> float:
        """Training time of the run so far, including the processes before a resume."""
        return self.train_seconds + time.time() - self.t0

    def _apply_time_limit(self, epoch: int) -> None:
        """--time-limit after `epoch`: stop here (out_of_time), or with --time-limit-fit lower the epoch count.

        Fitting re-estimates after every epoch from the mean epoch time so far (validation included) and only
        ever lowers --epochs; the linear / cosine LR schedule is rebuilt for the new length, so a run cut by
        the clock still ends annealed instead of stopping at a high learning rate. Decided on rank 0 and
        broadcast, so DDP ranks agree.
        """
        o = self.opt
        if not o.time_limit:
            return
        elapsed, budget = self.elapsed_seconds(), o.time_limit * 60
        if not o.time_limit_fit:
            self.out_of_time = bool(ddp.broadcast_object(elapsed >= budget, self.dist))
            return
        per_epoch = elapsed / max(epoch + 1, 1)
        fit = epoch + 1 + max(int((budget - elapsed) // max(per_epoch, 1e-9)), 0)
        fit = int(ddp.broadcast_object(min(fit, o.epochs), self.dist))
        if fit < o.epochs:
            log(f"--time-limit {o.time_limit:g} min: {fit} epochs fit ({per_epoch / 60:.2f} min each), not "
                f"{o.epochs}: LR schedule shortened", self.is_main and not o.quiet)
            o.epochs = fit
            self.lf = self._schedule(fit)

    def _schedule(self, epochs: int) -> Callable[[float], float]:
        """The LR factor per epoch; a run that is a window of a longer schedule (--schedule-epochs) keeps the
        schedule's end where it was when it has to train fewer epochs."""
        o = self.opt
        total = o.schedule_epochs - (o.epochs - epochs) if o.schedule_epochs else epochs
        return lr_lambda(total, self.hyp["lrf"], o.cos_lr, start=o.schedule_start)

    def _score(self) -> bool:
        """Validate the EMA model; True when it is the best so far."""
        self.metrics = self.validate()
        fi = fitness(self.metrics)
        is_best = fi > self.best_fitness
        self.best_fitness = max(fi, self.best_fitness)
        return is_best

    def _write_epoch(self, epoch: int, row: dict, is_best: bool, scored: bool) -> None:
        self._check_weights_finite(epoch)
        row["time"] = time.time() - self.epoch_t0
        with deferred_interrupts():  # a Ctrl-C / SIGTERM here waits, so the row, last.pt and best.pt agree
            self.results.append(row)
            self.position = (epoch + 1, 0)
            self.save_last()
            if is_best:
                self.save_checkpoint(self.best_path, with_state=False)
        if scored:
            plot_results(self.results.rows, self.run_dir / "results.png")
        log(format_row(row, self.epochs), not self.opt.quiet)

    def validate(self) -> dict:
        res = evaluate(
            self.ema.ema, self.data_cfg, split="val", imgsz=self.opt.imgsz, device=self.device,
            half=False, dataloader=self.val_loader, progress=not self.opt.quiet,
        )  # half=False: evaluate() would convert the EMA model itself to fp16
        return {k: v for k, v in res.items() if isinstance(v, (int, float))}

    def _maybe_close_mosaic(self, epoch: int) -> None:
        n = self.opt.close_mosaic
        if n and epoch >= self.epochs - n and getattr(self.dataset, "mosaic", False):
            self.dataset.mosaic = False
            self.train_loader = _clone_loader(self.train_loader)  # persistent workers hold a dataset copy
            log(f"mosaic off for the last {n} epochs", self.is_main and not self.opt.quiet)

    def _batches(self, epoch: int, start: int):
        """The epoch's batches in a deterministic order (seed + epoch), from batch `start`."""
        loader = self.train_loader
        sampler = getattr(loader, "sampler", None)
        if hasattr(sampler, "set_epoch"):
            sampler.set_epoch(epoch)
        elif getattr(loader, "generator", None) is not None:
            loader.generator.manual_seed(self.opt.seed + epoch)
        if start == 0:
            return iter(loader)
        return iter(_skip_batches(loader, start))

    def _check_weights_finite(self, epoch: int) -> None:
        if not all(torch.isfinite(p).all() for p in self.bare_model.parameters()):
            raise NonFiniteLossError(
                f"weights became non-finite during epoch {epoch}; training stopped, last good checkpoint kept: "
                f"{self.last_path}"
            )

    # ------------------------------------------------------------------ checkpoints

    def save_last(self) -> None:
        self.save_checkpoint(self.last_path, with_state=True)

    def save_checkpoint(self, path: Path, with_state: bool) -> None:
        # last.pt (resumable) keeps fp32; best.pt is a deliverable and stores fp16 like official files
        save_checkpoint(path, self.ema.ema, self._meta(), self._train_state() if with_state else None,
                        half=not with_state)

    def _meta(self) -> dict:
        o = self.opt
        entry = {
            "op": "sparse_train" if o.sparsity > 0 else "finetune",
            "data": str(o.data),
            "epochs": o.epochs,
            "epochs_done": self.position[0],
            "optimizer_steps": self.optimizer_steps,
            "imgsz": o.imgsz,
            "new_head": self.new_head,
            "sparsity": o.sparsity,
            "sparsity_schedule": o.sparsity_schedule,
            "sparsity_target": dict(o.sparsity_target) or None,
            "teacher": str(o.teacher) if o.teacher else None,
            "run_dir": str(self.run_dir),
            "metrics": {k: float(v) for k, v in self.metrics.items()},
        }
        return {
            "imgsz": o.imgsz,
            "history": [*self.source_meta["history"], entry],
            "source": self.source_meta["source"],
        }

    def _train_state(self) -> dict:
        epoch, it = self.position
        return {
            "epoch": epoch,
            "iter": it,
            "last_opt_step": self.last_opt_step,
            "optimizer_steps": self.optimizer_steps,
            "best_fitness": self.best_fitness,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "model": {k: v.detach().cpu().clone() for k, v in self.bare_model.state_dict().items()},
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema_updates": self.ema.updates,
            "opt": self.opt.plain(),
            "hyp": dict(self.hyp),
            "rng": rng_state(),
            "callbacks": self.callbacks.state_dict(),
            "source_meta": self.source_meta,
            "new_head": self.new_head,
            "nb": self.nb,
            "world_size": self.dist.world_size,
            "train_seconds": self.elapsed_seconds(),
            "epoch_loss": {"mean": self.position_loss[0].tolist(), "seen": self.position_loss[1]} if it else None,
        }

    def save_interrupted(self, terminated: bool = False) -> TrainingInterrupted:
        epoch, it = self.position
        if not self.is_main:
            return TrainingInterrupted("interrupted", None, terminated)
        self.save_last()
        msg = (f"{'terminated' if terminated else 'interrupted'} at epoch {epoch}, batch {it}: saved "
               f"{self.last_path}; resume with: python finetune.py --resume {self.run_dir}")
        log(msg)
        return TrainingInterrupted(msg, self.last_path, terminated)

    def result(self) -> TrainResult:
        best = self.best_path if self.best_path and self.best_path.is_file() else None
        return TrainResult(
            run_dir=self.run_dir, last=self.last_path, best=best, epochs=self.position[0],
            optimizer_steps=self.optimizer_steps, metrics=dict(self.metrics), best_fitness=self.best_fitness,
            model=self.ema.ema if self.ema is not None else None,
        )


# ---------------------------------------------------------------------- helpers


def resolve_workers(workers: int | None, device: torch.device, world_size: int = 1) -> int:
    """--workers when it is not given: none for a CPU run with at most 2 cores per process, else 8 (YOLOv5's).

    On a CPU the loader's workers and the training step share the same cores. With two, the step's second thread
    and the decoded-image cache (on without workers) beat overlapping the decoding: helmets at 320 trained 16.7 s
    an epoch without workers against 23.3-23.5 s with 1 or 2 (bench/train_throughput.py). A GPU run keeps its
    workers, which decode while the GPU computes.
    """
    if workers is not None:
        return workers
    if device.type == "cpu" and usable_cores() // max(1, world_size) <= 2:
        return 0
    return 8


def set_cpu_threads(workers: int, world_size: int = 1) -> int:
    """Leave a core per dataloader worker (and per DDP process) for CPU training.

    Intra-op threads that share cores with the augmentation workers spin against them: on a 2-core machine a
    tiny model trained 8x slower with two threads and two workers than with one thread.
    """
    n = max(1, usable_cores() // max(1, world_size) - workers)
    torch.set_num_threads(n)
    return n


def find_resume_checkpoint(resume: str | bool, project: str | Path) -> Path:
    """--resume with a last.pt path, a run folder, or nothing (the newest last.pt under --project)."""
    if resume is True or resume in ("", "True"):
        found = sorted(Path(project).glob("*/weights/last.pt"), key=lambda p: p.stat().st_mtime)
        if not found:
            raise TrainError(f"--resume: no */weights/last.pt under {project}")
        return found[-1]
    p = Path(str(resume))
    if p.is_dir():
        p = p / "weights" / "last.pt" if (p / "weights").is_dir() else p / "last.pt"
    if not p.is_file():
        raise TrainError(f"--resume {resume}: {p} not found")
    return p


def finished_run(last: str | Path) -> TrainResult | None:
    """The result of the run whose last.pt this is, if its training is complete (else None): a run stopped after
    its last epoch was saved, before the caller recorded it, is finished and is not resumed again."""
    state = read_checkpoint(last).get("train_state") or {}
    epochs = (state.get("opt") or {}).get("epochs")
    if not epochs or int(state.get("epoch", 0)) < int(epochs):
        return None
    last = Path(last)
    best = last.with_name("best.pt")
    return TrainResult(
        run_dir=last.parent.parent, last=last, best=best if best.is_file() else None, epochs=int(state["epoch"]),
        optimizer_steps=int(state["optimizer_steps"]), metrics=dict(state.get("metrics") or {}),
        best_fitness=float(state["best_fitness"]),
    )


def freeze_layers(model: nn.Module, freeze: list | tuple | int | None) -> list[str]:
    """YOLOv5's --freeze: [N] freezes layers 0..N-1, [a, b, ...] those layer indices. Returns frozen names."""
    if freeze is None:
        return []
    idx = [freeze] if isinstance(freeze, int) else list(freeze)
    layers = list(range(idx[0])) if len(idx) == 1 else idx
    prefixes = tuple(f"model.{x}." for x in layers)
    frozen = []
    for name, p in model.named_parameters():
        if prefixes and name.startswith(prefixes):
            p.requires_grad_(False)
            frozen.append(name)
    return frozen


class _SkipBatchSampler:
    def __init__(self, batch_sampler, skip: int):
        self.batch_sampler, self.skip = batch_sampler, skip

    def __iter__(self):
        for k, batch in enumerate(self.batch_sampler):
            if k >= self.skip:
                yield batch

    def __len__(self) -> int:
        return max(len(self.batch_sampler) - self.skip, 0)


def _clone_loader(
    loader: torch.utils.data.DataLoader, batch_sampler=None, persistent: bool | None = None
) -> torch.utils.data.DataLoader:
    """A new loader over the same dataset, sampler and generator (fresh worker processes)."""
    persistent = loader.persistent_workers if persistent is None else persistent
    return torch.utils.data.DataLoader(
        loader.dataset,
        batch_sampler=batch_sampler or loader.batch_sampler,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        pin_memory=loader.pin_memory,
        worker_init_fn=loader.worker_init_fn,
        generator=loader.generator,
        persistent_workers=persistent and loader.num_workers > 0,
    )


def _skip_batches(loader: torch.utils.data.DataLoader, skip: int) -> torch.utils.data.DataLoader:
    """The same loader without its first `skip` batches (indices are skipped, no image is loaded)."""
    return _clone_loader(loader, _SkipBatchSampler(loader.batch_sampler, skip), persistent=False)


def _target_text(target: dict) -> str:
    amount = {k: v for k, v in target.items() if k in ("ratio", "target_flops", "target_params") and v is not None}
    return ", ".join(f"{k} {v:g}" for k, v in amount.items())


def format_row(row: dict, epochs: int) -> str:
    parts = [f"epoch {row['epoch']}/{epochs - 1}"]
    parts += [f"{k.split('/')[1].replace('_loss', '')} {row[k]:.4f}" for k in row if str(k).startswith("train/")]
    for key, label in (("metrics/precision", "P"), ("metrics/recall", "R"), ("metrics/mAP_0.5", "mAP50"),
                       ("metrics/mAP_0.5:0.95", "mAP50-95")):
        v = row.get(key, math.nan)
        if isinstance(v, float) and not math.isnan(v):
            parts.append(f"{label} {v:.3f}")
    if row.get("sparsity_sr"):
        parts.append(f"sr {row['sparsity_sr']:.2g}")
    if "gamma_lt_1e-2" in row:
        parts.append(f"|gamma|<1e-2 {row['gamma_lt_1e-2']:.3f}")
    if "cut_gamma_max" in row:
        parts.append(f"cut {row['cut_channels']} ch, max |gamma| {row['cut_gamma_max']:.3g}")
    parts.append(f"steps {row['optimizer_steps']}")
    if "time" in row:
        parts.append(f"{row['time']:.1f}s")
    return "  ".join(parts)
