"""`prune.py pipeline`'s settings (PipelineOptions: one field per flag) and their checks, made before a run folder
exists: an impossible request stops in one line naming the flag (PipelineError)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from prune.config import PruneConfig, PruneError
from prune.latency import DEFAULT_TOLERANCE
from prune.latency_moves import parse_moves
from prune.scales import check_level_spec

TEACHER_CHOICES = ("none", "unpruned", "baseline")
SPARSITY_MODES = ("uniform", "targeted")
PRUNE_KEYS = ("ratio", "target_flops", "target_params", "importance", "min_keep", "round_to", "ignore", "compensate",
              "recalibrate", "reconstruct")


class PipelineError(ValueError):
    """A pipeline request that cannot run; one line naming the flag or file."""


@dataclass
class PipelineOptions:
    """Pipeline settings; names are the `prune.py pipeline` flags (dashes -> underscores)."""

    data: str = ""
    weights: str = ""  # starting checkpoint (official YOLOv5 .pt or ours)
    cfg: str = ""  # or a model yaml to train from scratch in the sparse stage
    imgsz: int = 640
    batch_size: int = 16
    device: str = "cpu"
    workers: int | None = None  # training stages: None lets finetune pick (0 on a small CPU); scoring: 2
    train_threads: int | None = None  # training stages' torch threads (None: finetune picks; see finetune.py)
    cache: str = "auto"  # training stages: decoded images in memory (auto, ram, no); results do not depend on it
    seed: int = 0
    hyp: str | None = None
    finetune_hyp: str | None = None  # hyperparameters of the fine-tune stage(s) only (default: hyp)
    nbs: int = 16  # no accumulation: the sparsity rate acts per optimizer step (docs/guide.md, Defaults)
    optimizer: str | None = None  # None: the model family's (SGD; AdamW for YOLO-FastestV2)
    cos_lr: bool = False
    lr_schedule: str = "restart"  # restart: each training stage its own; continuous: one over sparse + fine-tune
    dense_epochs: int = 0  # optional: train the same model without the penalty, for comparison
    sparse_epochs: int = 10
    sparsity: float = 0.02
    sparsity_schedule: str = "constant"
    sparsity_mode: str = "targeted"  # targeted: only what the prune plan would cut; uniform: every BatchNorm
    ratio: float | None = None
    target_flops: float | None = 0.7
    target_params: float | None = None
    target_latency: float | None = None  # ms, measured in ONNX Runtime with latency_threads (the prune stage times it)
    target_speedup: float | None = None  # the prune stage's input's measured median / this is the budget
    latency_threads: int = 1
    latency_table: str | None = None  # default ~/.cache/yolov5-slim/latency/<arch hash>.json
    latency_tolerance: float = DEFAULT_TOLERANCE
    latency_moves: str = "width"  # or width,depth: the latency search may remove residual blocks
    depth: int | None = None  # residual blocks removed before the channel cut (first round)
    drop_scale: str | None = None  # detection level removed before the channel cut (first round)
    importance: str = "slim"
    min_keep: float = 0.1
    round_to: int = 8
    ignore: list[str] = field(default_factory=list)
    compensate: str = "beta"
    recalibrate: int = 0
    reconstruct: int = 128
    finetune_epochs: int = 80
    rounds: int = 1  # iterative mode: this many prune -> fine-tune rounds, each a geometric step toward the target
    teacher: str = "none"  # none | unpruned (the prune stage's input; alias: baseline) | a checkpoint path
    distill_weight: float | None = None  # hyp distill override for the fine-tune stage (needs a teacher)
    close_mosaic: int = 0  # fine-tune stage(s): mosaic off for the last N epochs of each
    val_every: int = 1  # score every N epochs in the training stages (and after the last)
    int8: bool = False
    formats: list[str] = field(default_factory=list)  # report stage: the fine-tuned model also as openvino / ncnn
    latency_runs: int = 50
    threads: list[int] = field(default_factory=lambda: [1, 0])
    project: str = "runs/pipeline"
    name: str = "exp"
    quiet: bool = False

    @property
    def eval_workers(self) -> int:
        """Loader workers for scoring (no training step to share the cores with): --workers, else 2."""
        return 2 if self.workers is None else self.workers

    def validate(self) -> PipelineOptions:
        if not self.data:
            raise PipelineError("--data is required (a YOLOv5 data.yaml)")
        if not (self.weights or self.cfg):
            raise PipelineError("give --weights (a checkpoint to shrink) or --cfg (a model yaml to train from scratch)")
        if self.cfg and not self.weights and self.sparse_epochs < 1:
            raise PipelineError("--cfg trains from scratch: --sparse-epochs must be >= 1")
        if len([x for x in self.amount.values() if x is not None]) != 1:
            raise PipelineError("give exactly one of --ratio (fraction REMOVED), --target-flops or --target-params "
                                "(fraction KEPT), --target-latency (ms) or --target-speedup")
        for flag, v in (("--weights", self.weights), ("--data", self.data), ("--hyp", self.hyp),
                        ("--finetune-hyp", self.finetune_hyp)):
            if v and not Path(v).is_file():
                raise PipelineError(f"{flag} {v}: file not found")
        if self.sparsity_mode not in SPARSITY_MODES:
            raise PipelineError(f"--sparsity-mode {self.sparsity_mode}: use one of {', '.join(SPARSITY_MODES)}")
        if self.sparsity_mode == "targeted" and self.sparse_epochs > 0 and self.importance != "slim":
            raise PipelineError("--sparsity-mode targeted pushes BatchNorm gammas, so it needs --importance slim")
        if self.teacher not in TEACHER_CHOICES and not Path(self.teacher).is_file():
            raise PipelineError(f"--teacher {self.teacher}: not none, unpruned or an existing checkpoint file")
        if self.distill_weight is not None and self.teacher == "none":
            raise PipelineError("--distill-weight needs --teacher (unpruned or a checkpoint)")
        if self.rounds < 1:
            raise PipelineError(f"--rounds {self.rounds} must be >= 1 (1 = prune once, then fine-tune)")
        if self.rounds > 1 and self.finetune_epochs < self.rounds:
            raise PipelineError(f"--rounds {self.rounds} needs --finetune-epochs >= {self.rounds} (each round "
                                "fine-tunes at least one epoch)")
        if self.distill_weight is not None and self.distill_weight < 0:
            raise PipelineError(f"--distill-weight {self.distill_weight} must be >= 0")
        if self.close_mosaic < 0:
            raise PipelineError(f"--close-mosaic {self.close_mosaic} must be >= 0 (0 = mosaic to the end)")
        if self.depth is not None and self.depth < 1:
            raise PipelineError(f"--depth {self.depth}: expected a positive number of residual blocks to remove")
        self._check_formats()
        try:  # now, not after the sparse stage
            if self.drop_scale is not None:
                check_level_spec(self.drop_scale, "--drop-scale")
            cfg = self.prune_config(self.amount)
            if cfg.wants_latency:
                self._check_latency()
        except PruneError as e:
            raise PipelineError(str(e)) from None
        return self

    @property
    def amount(self) -> dict:
        return {k: getattr(self, k) for k in ("ratio", "target_flops", "target_params", "target_latency",
                                              "target_speedup")}  # fmt: skip

    def _check_latency(self) -> None:
        """A latency amount's own flags (the budget against the floor is check_inputs', it needs the model)."""
        if self.rounds > 1:
            raise PipelineError("--rounds > 1 with --target-latency/--target-speedup is not supported: one cut, "
                                "timed and corrected, then the fine-tune")
        if not 0 < self.latency_tolerance < 1 or self.latency_threads < 1:
            raise PipelineError(f"--latency-tolerance {self.latency_tolerance} must be in (0, 1) and "
                                f"--latency-threads {self.latency_threads} >= 1")
        parse_moves(self.latency_moves)

    @property
    def latency_key(self) -> dict:
        """The prune stage key's latency part; {} for a FLOPs / params / ratio amount (their keys stay as they were)."""
        if self.target_latency is None and self.target_speedup is None:
            return {}
        amount = {k: v for k, v in self.amount.items() if v is not None}
        return {**amount, "latency_threads": self.latency_threads, "latency_tolerance": self.latency_tolerance,
                "latency_moves": ",".join(parse_moves(self.latency_moves))}  # fmt: skip

    def _check_formats(self) -> None:
        """--formats: known names and their optional extras installed, checked now, not after hours of training."""
        if not self.formats:
            return
        # optional extras: reports.runtime_export (onnx, onnxruntime) loads only when formats are asked for
        from reports.runtime_export import check_format_request

        for fmt in self.formats:
            if fmt not in ("openvino", "ncnn"):
                raise PipelineError(f"--formats {fmt}: expected openvino or ncnn (ONNX Runtime is always measured)")
            check_format_request(fmt, int8=self.int8 and fmt == "openvino")

    def prune_config(self, amount: dict) -> PruneConfig:
        """The prune stage's settings, with `amount` (one round's ratio or target)."""
        return PruneConfig.from_flags(**amount, importance=self.importance, min_keep=self.min_keep,
                                      round_to=self.round_to, ignore=tuple(self.ignore), compensate=self.compensate,
                                      recalibrate=self.recalibrate, reconstruct=self.reconstruct, imgsz=self.imgsz)

    def teacher_path(self, prunable: str) -> str:
        """The fine-tune stage's teacher checkpoint ('' = none); `prunable` is the prune stage's input."""
        if self.teacher == "none":
            return ""
        return prunable if self.teacher in ("unpruned", "baseline") else self.teacher
