"""The epoch loop: batches in a deterministic order, warm-up, accumulation, the optimizer step with its callbacks,
the end of an epoch (EMA attributes, scoring, results row, last.pt / best.pt) and the --time-limit."""

from __future__ import annotations

import math
import time
from typing import Any, Callable

import torch
from torch import nn

from finetune import ddp
from finetune.optim import apply_warmup, clip_gradients, lr_lambda, set_epoch_lr
from finetune.options import NonFiniteLossError
from finetune.progress import EpochProgress, is_tty, log
from finetune.results import LOSS_NAMES, METRIC_KEYS, fitness, format_row
from finetune.runs import plot_results
from finetune.state import rng_state
from yolo.errors import deferred_interrupts, raise_if_terminated
from yolo.val import evaluate


class EpochLoop:
    """The Trainer's training side (a mixin of `finetune.trainer.Trainer`): one epoch, one step, an epoch's end."""

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
        self._mark_position(epoch, start)
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
        saved = self.resume.state.get("epoch_loss") if (start and self.resume) else None
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
            self._mark_position(self.epoch, i + 1)  # batches after this step are redone on resume

    def _mark_position(self, epoch: int, batch: int) -> None:
        """Where a resume continues inside an epoch (the next batch to train), with what last.pt must hold as it
        was there, since the batches after it are redone on resume: the epoch's running loss, and the BatchNorm
        statistics and RNG state, which those batches' forward passes and augmentations have moved on."""
        self.position = (epoch, batch)
        self.position_loss = (self.mloss.clone(), self.seen)
        buffers = {k: v.detach().clone() for k, v in self.bare_model.named_buffers()}
        self.position_extras = {"buffers": buffers, "rng": rng_state()}

    def _mark_epoch_done(self, epoch: int) -> None:
        """The position after a finished epoch: everything is current, nothing is redone."""
        self.position = (epoch + 1, 0)
        self.position_extras = None

    def optimizer_step(self) -> None:
        self.scaler.unscale_(self.optimizer)
        max_norm = getattr(self.compute_loss, "max_grad_norm", 10.0)  # the loss's family says (yolo/loss.py)
        if max_norm:
            clip_gradients(self.model, max_norm=max_norm)
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
        self._mark_epoch_done(epoch)

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
            self._mark_epoch_done(epoch)
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


def freeze_bn_statistics(model: nn.Module) -> None:
    """Every BatchNorm to eval mode (its scale and shift still learn): training then sees the function the model
    computes at inference instead of one normalised by small-batch statistics. Without batch normalisation to
    absorb large updates it needs a low LR: on a pruned, re-fitted model at the fine-tune LR it diverged."""
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.eval()


class _SkipBatchSampler:
    """A batch sampler without its first `skip` batches: a run resumed mid-epoch starts at its batch."""

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

