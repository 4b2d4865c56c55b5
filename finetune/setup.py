"""Setting up a run, before its first epoch: options checked, data, model and Detect head, the sparsity
callback (what the prune stage says to push), loaders, optimiser, teacher, and the run folder last (bad data,
weights or a bad teacher leave no run folder behind)."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from finetune import ddp
from finetune.distill import Distiller
from finetune.ema import ModelEMA
from finetune.optim import build_optimizer, nominal_accumulate, warmup_iters
from finetune.options import TrainError
from finetune.progress import log
from finetune.results import target_text
from finetune.runs import write_yaml
from prune.sparse_target import TargetedSelection, prunable_bn_names
from sparsity.callback import SparsityCallback
from yolo.checkpoint import load_backbone_weights, load_model
from yolo.data import create_dataloader, load_data_yaml
from yolo.device import set_torch_threads, usable_cores
from yolo.errors import classes_text
from yolo.fastestv2_loss import build_loss, family_hyp, family_optimizer
from yolo.fileio import check_writable, increment_run_dir
from yolo.hyp import dump_hyp
from yolo.imgsz import max_stride
from yolo.model import build_model, reset_detect_head
from yolo.val import build_val_loader, has_class_names, short_names


class RunSetup:
    """The Trainer's set-up pieces (a mixin of `finetune.trainer.Trainer`), called in this order by `setup`."""

    def _check_options(self) -> None:
        o = self.opt
        if not o.data:
            raise TrainError("--data is required (a data yaml)")
        if not (o.weights or o.cfg or o.backbone):
            raise TrainError("give --weights (a checkpoint) or --cfg (a model yaml to start from scratch)")
        if o.backbone and o.weights:
            raise TrainError(f"--backbone {o.backbone} starts a new model; it cannot be combined with --weights")
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
        if o.threads is not None and o.threads < 1:
            raise TrainError(f"--threads {o.threads}: must be >= 1 (leave it out for the default)")
        if o.time_limit < 0:
            raise TrainError(f"--time-limit {o.time_limit}: minutes must be >= 0 (0 = no limit)")
        self._check_run_location()

    def _check_run_location(self) -> None:
        """Before any work: the run folder can be written (a resumed run's own folder, else under --project)."""
        if not self.is_main:
            return
        flag, folder = ("--resume", self.resume.run_dir) if self.resume else ("--project", Path(self.opt.project))
        try:
            check_writable(folder, flag)
        except ValueError as e:
            raise TrainError(str(e)) from None

    def _setup_data(self) -> None:
        self.data_cfg = load_data_yaml(self.opt.data)

    def _setup_model(self) -> None:
        model, meta = self._load_initial_model()
        nc, names = self.data_cfg.nc, list(self.data_cfg.names)
        self.new_head = self._needs_new_head(model)
        if self.new_head:
            reset_detect_head(model, nc, names)
        model.names = names
        freeze_layers(model, self.opt.freeze)
        self._apply_family_hyp(model)
        self.model = model.to(self.device)
        self.source_meta = {"history": list(meta.get("history") or []), "source": dict(meta.get("source") or {})}
        if self.resume:
            self.source_meta = dict(self.resume.state["source_meta"])
            self.new_head = bool(self.resume.state.get("new_head", False))

    def _apply_family_hyp(self, model: nn.Module) -> None:
        """The family's own defaults (yolo.fastestv2_loss.FAMILY_HYP, family_optimizer) where the user set nothing:
        no --optimizer, no --hyp file, no override of that key; a resumed run keeps what it started with."""
        if self.opt.optimizer is None:
            self.opt.optimizer = family_optimizer(model)
        if self.resume or self.opt.hyp:
            return
        own = {k: v for k, v in family_hyp(model).items() if k not in self.opt.hyp_overrides}
        if own:
            self.hyp.update(own)
            log(f"hyperparameters of this model family: {', '.join(f'{k} {v:g}' for k, v in own.items())}",
                self.is_main)

    def _needs_new_head(self, model: nn.Module) -> bool:
        """A new Detect head for another class count (transfer learning) or on --new-head. The same count under
        other names keeps the trained head, which is right for a renaming and wrong for other classes: said in
        one line with the way to a new head, never silently."""
        o, nc, names = self.opt, self.data_cfg.nc, list(self.data_cfg.names)
        if self.resume:
            return False  # the run's model already has the data's head and names
        if model.nc != nc:
            log(f"transfer learning: the model has {classes_text(model.nc)}, {o.data} has {nc}: new Detect head",
                self.is_main)
            return True
        if o.new_head:
            log(f"--new-head: a new Detect head for the {classes_text(nc)} of {o.data}", self.is_main)
            return True
        if o.weights and list(model.names) != names and has_class_names(model.names):
            log(f"warning: {o.weights} predicts {short_names(model.names)}; {o.data} names its {classes_text(nc)} "
                f"{short_names(names)}: the trained Detect head is kept and its classes renamed in order "
                "(--new-head trains a new head for other classes)", self.is_main)
        return False

    def _load_initial_model(self) -> tuple[nn.Module, dict]:
        if self.resume:
            model, meta = load_model(self.resume.path)  # EMA weights; training weights restored later
            return model, meta
        if self.opt.weights:
            if self.opt.cfg:
                log(f"--weights given: --cfg {self.opt.cfg} is ignored", self.is_main)
            return load_model(self.opt.weights)
        cfg = self.opt.cfg or "yolo-fastestv2"  # only --backbone given: the family that backbone belongs to
        model = build_model(cfg, nc=self.data_cfg.nc)
        if self.opt.backbone:
            load_backbone_weights(model, self.opt.backbone)
            log(f"backbone weights from {self.opt.backbone} (layers 0-6); neck and head start from scratch",
                self.is_main)
        return model, {"source": {"cfg": str(cfg), "backbone": str(self.opt.backbone)}, "history": []}

    def _setup_sparsity(self) -> None:
        """The sparse stage's callback, told by the prune stage what to push (built from the run's options, so a
        resumed run gets the penalty it was started with), ahead of the caller's callbacks."""
        o, model = self.opt, self.bare_model
        selection = None
        if o.sparsity > 0 and o.sparsity_target:
            selection = TargetedSelection(model, {"imgsz": o.imgsz, **o.sparsity_target})
        prunable = prunable_bn_names(model) if o.sparsity_layers == "prunable" else None
        self.sparsity = SparsityCallback(o.sparsity, o.sparsity_schedule, o.sparsity_layers, selection, prunable)
        self.callbacks.items.insert(0, self.sparsity)

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
        return max(max_stride(self.bare_model), 32)

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
        self.compute_loss = build_loss(model, hyp, o.imgsz)  # YOLOv5's, or the YOLO-FastestV2 authors' terms

    def _setup_teacher(self) -> None:
        """--teacher: every process holds its own frozen copy (never DDP-wrapped) on its device."""
        if not self.opt.teacher:
            return
        self.distiller = Distiller.from_weights(
            self.opt.teacher, self.bare_model, self.hyp, self.opt.imgsz, self.device, self.compute_loss.balance
        )
        self.loss_hooks.append(self.distiller)
        self._log_teacher()

    def _log_teacher(self) -> None:
        g = self.distiller.gains
        log(f"distillation from {self.opt.teacher}: gain {self.hyp['distill']:g} (scaled obj {g['obj']:.3g}, "
            f"cls {g['cls']:.3g}, box {g['box']:.3g})", self.is_main and not self.opt.quiet)

    def _setup_run_dir(self) -> None:
        run_dir = None
        if self.is_main:
            if self.resume:
                run_dir = self.resume.run_dir
            else:
                run_dir = increment_run_dir(self.opt.project, self.opt.name, self.opt.exist_ok)
            self._guard_input_weights(run_dir)
            (run_dir / "weights").mkdir(parents=True, exist_ok=True)
            write_yaml(run_dir / "args.yaml", self.opt.plain())
            dump_hyp(self.hyp, run_dir / "hyp.yaml")
        run_dir = ddp.broadcast_object(str(run_dir) if run_dir else None, self.dist)
        self.run_dir = Path(run_dir) if (run_dir and self.is_main) else None

    def _guard_input_weights(self, run_dir: Path) -> None:
        if not self.opt.weights or self.resume:
            return
        src = Path(self.opt.weights).resolve()
        for out in (run_dir / "weights" / "last.pt", run_dir / "weights" / "best.pt"):
            if out.resolve() == src:
                raise TrainError(f"the run would overwrite its input weights {self.opt.weights}; use another --name")

    def _log_start(self) -> None:
        o = self.opt
        aim = f", targeted at {target_text(o.sparsity_target)}" if o.sparsity_target else ""
        stage = f"sparse training (sr {o.sparsity}, {o.sparsity_schedule}{aim})" if o.sparsity > 0 else "training"
        log(f"{stage}: {o.epochs} epochs, batch {o.batch_size} (accumulate to {o.nbs}), {self.nb} batches/epoch, "
            f"imgsz {o.imgsz}, {o.optimizer}, device {self.device}"
            f"{f' x{self.dist.world_size} processes' if self.dist.distributed else ''}; results in {self.run_dir}",
            self.is_main and not o.quiet)


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


def set_training_threads(
    requested: int | None, device: torch.device, workers: int, world_size: int = 1
) -> tuple[int, str]:
    """Torch's intra-op threads for training, and why: --threads; else OMP_NUM_THREADS when set; else on a CPU a
    core per process less one per dataloader worker, on a GPU torch's own default.

    Intra-op threads that share cores with the augmentation workers spin against them: on a 2-core machine a
    tiny model trained 8x slower with two threads and two workers than with one thread.
    """
    if device.type == "cpu":
        cores = usable_cores() // max(1, world_size)
        default = max(1, cores - workers)
        why = f"{cores} usable cores{' per process' if world_size > 1 else ''} less {workers} loader workers"
    else:
        default, why = torch.get_num_threads(), "torch's default on a GPU run"
    return set_torch_threads(requested, default, why)


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
