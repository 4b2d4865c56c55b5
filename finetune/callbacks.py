"""Trainer callbacks: how the sparse stage, distillation and tests plug into the one training loop.

A callback is any object with some of these methods (missing ones are skipped); each gets the `Trainer`:

    on_train_start(trainer)              after set-up (and resume), before the first epoch
    on_epoch_start(trainer)
    on_before_optimizer_step(trainer)    gradients final: accumulated, unscaled, all-reduced, clipped
    on_optimizer_step(trainer)           after optimizer.step() and the EMA update
    on_batch_end(trainer)                trainer.batch_index, trainer.ni, trainer.loss_items are current
    on_epoch_end(trainer, row)           may add columns to the results row (dict) before it is written
    on_train_end(trainer, result)

Callbacks with a `name` and `state_dict()` / `load_state_dict()` have their state kept in checkpoints for
resume. Loss hooks (`trainer.loss_hooks`) are callables `hook(trainer, imgs, targets, preds)` returning
an extra loss term (already scaled like the main loss, i.e. times batch size) or None: the place for
knowledge distillation.
"""

from __future__ import annotations

from collections.abc import Iterable

EVENTS = (
    "on_train_start",
    "on_epoch_start",
    "on_before_optimizer_step",
    "on_optimizer_step",
    "on_batch_end",
    "on_epoch_end",
    "on_train_end",
)


class Callbacks:
    """An ordered list of callback objects."""

    def __init__(self, items: Iterable[object] = ()):
        self.items: list[object] = list(items)

    def add(self, cb: object) -> None:
        self.items.append(cb)

    def run(self, event: str, *args) -> None:
        if event not in EVENTS:
            raise ValueError(f"unknown callback event {event!r}")
        for cb in self.items:
            fn = getattr(cb, event, None)
            if fn is not None:
                fn(*args)

    def state_dict(self) -> dict:
        return {cb.name: cb.state_dict() for cb in self.items if _stateful(cb)}

    def load_state_dict(self, state: dict) -> None:
        for cb in self.items:
            if _stateful(cb) and cb.name in state:
                cb.load_state_dict(state[cb.name])


def _stateful(cb: object) -> bool:
    return hasattr(cb, "name") and hasattr(cb, "state_dict") and hasattr(cb, "load_state_dict")
