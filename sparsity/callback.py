"""The sparse-training stage as a trainer callback: one code path with ordinary fine-tuning.

The trainer calls `on_train_start`, `on_before_optimizer_step` (after accumulation, AMP unscaling, the DDP
all-reduce and gradient clipping; right before `optimizer.step()`) and `on_epoch_end` (which adds the
sparsity columns to the results row). With `sr == 0` nothing touches the gradients and only the gamma
statistics are recorded.

What to push comes from the caller, which asks the prune stage (prune/sparse_target.py): with a `selection`
(a prune target's cut set, sparsity/targeted.py) the penalty acts only on the channels the prune plan would
remove, re-chosen at the start of every epoch on the live gammas; with layers "prunable", `prunable` names the
BatchNorms it acts on. This package never builds a prune graph itself.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path

from sparsity.bn_l1 import apply_bn_l1, select_bns, sr_at
from sparsity.stats import gamma_histogram, gamma_stats, plot_gamma_histograms
from sparsity.targeted import Selection, TargetState, apply_targeted_l1

HIST_PNG = "gamma_hist.png"


class SparsityCallback:
    name = "sparsity"

    def __init__(
        self,
        sr: float = 0.0,
        schedule: str = "constant",
        layers: str = "all",
        selection: Selection | None = None,
        prunable: Collection[str] | None = None,
    ):
        if sr < 0:
            raise ValueError(f"sparsity rate must be >= 0, got {sr}")
        sr_at(sr, schedule, 0, 1)  # validates the schedule name
        self.sr, self.schedule, self.layers = float(sr), schedule, layers
        self.selection = selection if sr > 0 else None  # targeted: chooses the cut set
        self.prunable = prunable
        self.cut: TargetState | None = None  # the current cut set (kept in checkpoints: a resume goes on with it)
        self.bns: list = []
        self.history: list[dict] = []  # {"epoch", "hist"} per finished epoch
        self.steps = 0  # optimiser steps the penalty was applied to

    def current_sr(self, trainer) -> float:
        progress = trainer.epoch + trainer.batch_index / max(trainer.nb, 1)
        return sr_at(self.sr, self.schedule, progress, trainer.epochs)

    def on_train_start(self, trainer) -> None:
        self.bns = select_bns(trainer.bare_model, self.layers, self.prunable)
        self.history = [h for h in self.history if h["epoch"] < trainer.start_epoch]  # resume: drop redone epochs

    def on_epoch_start(self, trainer) -> None:
        if self.selection is not None and self.cut is None:  # later epochs reuse the set chosen at the last end
            self.cut = self.selection.select(trainer.bare_model)

    def on_before_optimizer_step(self, trainer) -> None:
        if self.sr <= 0:
            return
        if self.selection is not None:
            apply_targeted_l1(trainer.bare_model, self.current_sr(trainer), self.cut.masks)
        else:
            apply_bn_l1(None, self.current_sr(trainer), self.bns)
        self.steps += 1

    def on_epoch_end(self, trainer, row: dict) -> None:
        stats = gamma_stats(trainer.bare_model)
        row["sparsity_sr"] = self.current_sr(trainer) if self.sr > 0 else 0.0
        row["gamma_lt_1e-3"] = stats["lt_1e-3"]
        row["gamma_lt_1e-2"] = stats["lt_1e-2"]
        row["gamma_median"] = stats["median"]
        if self.selection is not None:  # re-chosen now, for the next epoch; how far from zero it still is
            self.cut = self.selection.select(trainer.bare_model)
            row["cut_channels"] = self.cut.channels
            row["cut_gamma_max"] = self.cut.max_gamma
        self.history.append({"epoch": trainer.epoch, "hist": gamma_histogram(trainer.bare_model)})
        if self.sr > 0 and trainer.is_main and trainer.run_dir is not None:
            plot_gamma_histograms(self.history, Path(trainer.run_dir) / HIST_PNG)

    def state_dict(self) -> dict:
        cut = self.cut.state_dict() if self.cut is not None else None
        return {"history": self.history, "steps": self.steps, "cut": cut}

    def load_state_dict(self, state: dict) -> None:
        """The history, the step count and the cut set in force: a run resumed mid-epoch pushes the channels
        chosen at that epoch's start, not a set re-chosen on the weights it stopped at."""
        self.history = list(state.get("history", []))
        self.steps = int(state.get("steps", 0))
        cut = state.get("cut")
        self.cut = TargetState.from_state_dict(cut) if cut and self.selection is not None else None
