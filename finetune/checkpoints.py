"""Checkpoints of a run and resuming one: last.pt (weights, EMA, optimizer, position, RNG, options, callback
state) written atomically after every epoch and on Ctrl-C, best.pt (weights only), and reading a last.pt back
for --resume."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from finetune.options import RESUME_OVERRIDABLE, TrainError, TrainingInterrupted, TrainOptions, TrainResult
from finetune.progress import log
from finetune.state import rng_state, set_rng_state
from yolo.checkpoint import CheckpointError, read_checkpoint, safe_torch_load, save_checkpoint


class RunCheckpoints:
    """The Trainer's checkpoint side (a mixin of `finetune.trainer.Trainer`): last.pt / best.pt, Ctrl-C, and
    restoring a resumed run's state."""

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
        model, rng = self._position_model_and_rng()
        return {
            "epoch": epoch,
            "iter": it,
            "last_opt_step": self.last_opt_step,
            "optimizer_steps": self.optimizer_steps,
            "best_fitness": self.best_fitness,
            "metrics": {k: float(v) for k, v in self.metrics.items()},
            "model": model,
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict(),
            "ema_updates": self.ema.updates,
            "opt": self.opt.plain(),
            "hyp": dict(self.hyp),
            "rng": rng,
            "callbacks": self.callbacks.state_dict(),
            "source_meta": self.source_meta,
            "new_head": self.new_head,
            "nb": self.nb,
            "world_size": self.dist.world_size,
            "train_seconds": self.elapsed_seconds(),
            "epoch_loss": {"mean": self.position_loss[0].tolist(), "seen": self.position_loss[1]} if it else None,
        }

    def _position_model_and_rng(self) -> tuple[dict, dict]:
        """The training weights and RNG state at `position`: mid-epoch, the buffers (BatchNorm statistics) and RNG
        saved with it, so that the batches after it, redone on resume, do not count twice."""
        model = {k: v.detach().cpu().clone() for k, v in self.bare_model.state_dict().items()}
        extras = self.position_extras
        if not extras:
            return model, rng_state()
        model.update({k: v.detach().cpu().clone() for k, v in extras["buffers"].items() if k in model})
        return model, extras["rng"]

    def save_interrupted(self, terminated: bool = False) -> TrainingInterrupted:
        epoch, it = self.position
        if not self.is_main:
            return TrainingInterrupted("interrupted", None, terminated)
        self.save_last()
        msg = (f"{'terminated' if terminated else 'interrupted'} at epoch {epoch}, batch {it}: saved "
               f"{self.last_path}; resume with: python finetune.py --resume {self.run_dir}")
        log(msg)
        return TrainingInterrupted(msg, self.last_path, terminated)

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
        log(f"resuming {self.resume.path} from epoch {self.start_epoch}, batch {self.start_iter} "
            f"({self.optimizer_steps} optimizer steps done)", self.is_main)

    def result(self) -> TrainResult:
        best = self.best_path if self.best_path and self.best_path.is_file() else None
        return TrainResult(
            run_dir=self.run_dir, last=self.last_path, best=best, epochs=self.position[0],
            optimizer_steps=self.optimizer_steps, metrics=dict(self.metrics), best_fitness=self.best_fitness,
            model=self.ema.ema if self.ema is not None else None,
        )


@dataclass
class Resume:
    """A run to continue: its last.pt, its training state and its folder."""

    path: Path
    state: dict
    run_dir: Path


def resolve_resume(opt: TrainOptions) -> tuple[TrainOptions, Resume | None]:
    """For --resume: the run's own options (all of them, as saved in its last.pt; only RESUME_OVERRIDABLE ones
    that this call sets explicitly replace them) and the state to continue from. Without --resume: `opt`, None."""
    if not opt.resume:
        return opt, None
    path = find_resume_checkpoint(opt.resume, opt.project)
    ckpt = read_run_checkpoint(path)
    state = ckpt.get("train_state")
    if not state:
        raise TrainError(f"{path}: holds no training state to resume (a best.pt or a final export?)")
    saved = TrainOptions.from_any(state["opt"])
    defaults = TrainOptions()
    for k in RESUME_OVERRIDABLE:  # the run's own settings, unless this call sets them explicitly
        if getattr(opt, k) != getattr(defaults, k):
            setattr(saved, k, getattr(opt, k))
    saved.resume = str(path)
    if state["epoch"] >= saved.epochs:
        raise TrainError(f"{path}: training to {saved.epochs} epochs is finished; nothing to resume")
    run_dir = path.parent.parent if path.parent.name == "weights" else path.parent
    return saved, Resume(path, state, run_dir)


def read_run_checkpoint(path: Path) -> dict:
    """A checkpoint written by this tool, for --resume; anything else is one line naming the file and what was
    expected (never PyTorch's own advice, which for a refused pickle is to load it unsafely)."""
    try:
        return read_checkpoint(path)  # weights_only: nothing in the file runs
    except CheckpointError:
        raise TrainError(f"--resume {path}: {_why_not_ours(path)}; expected the weights/last.pt of a finetune.py "
                         "run") from None


def _why_not_ours(path: Path) -> str:
    """What the file is instead, found through the allow-listing unpickler the weights loaders use: a hostile
    pickle is refused there too, naming what it asked for, and nothing from it runs."""
    try:
        obj = safe_torch_load(path)
    except CheckpointError as e:
        return str(e).removeprefix(f"{path}: ")
    if isinstance(obj, dict) and ("model" in obj or "ema" in obj):
        return "an official YOLOv5 checkpoint, not a run of this tool (start one with --weights)"
    return f"not a checkpoint of this tool (it holds a {type(obj).__name__})"


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
