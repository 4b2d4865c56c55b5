"""`finetune.py`: argument parsing (YOLOv5 flag names) around `finetune.trainer.train`."""

from __future__ import annotations

import argparse
import os
import sys

from finetune.optim import OPTIMIZERS
from finetune.trainer import NonFiniteLossError, train
from sparsity.bn_l1 import LAYER_CHOICES, SCHEDULES
from sparsity.targeted import parse_target
from yolo.data import CACHE_MODES, data_checks
from yolo.errors import run_cli


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="finetune.py",
        description="Train / fine-tune a YOLOv5 detector; with --sparsity, the sparse-training stage (BN L1).",
    )
    p.add_argument("--weights", default="", help="start from: official YOLOv5 .pt, ours, or a pruned checkpoint")
    p.add_argument("--cfg", default="", help="model yaml to start from scratch (e.g. yolo/cfgs/yolov5n.yaml)")
    p.add_argument("--backbone", default="",
                   help="the authors' ShuffleNetV2 x0.5 backbone .pth: a new --cfg yolo-fastestv2 model starts from it")
    p.add_argument("--data", default="", help="data.yaml (YOLOv5 format)")
    p.add_argument("--hyp", default=None, help="hyperparameter yaml (default: hyp.scratch-low values)")
    p.add_argument("--epochs", type=int, default=100, help="training epochs (default 100)")
    p.add_argument("--batch-size", type=int, default=16, help="total batch size over all processes")
    p.add_argument("--imgsz", "--img", "--img-size", dest="imgsz", type=int, default=640, help="train/val size")
    p.add_argument("--device", default="", help="cpu, 0 or 0,1 (default: first GPU, else CPU)")
    p.add_argument("--workers", type=int, default=None,
                   help="dataloader workers per process (default: 0 when training on a CPU with at most 2 cores, "
                        "where the training step needs them; else 8)")
    p.add_argument("--threads", type=int, default=None, metavar="N",
                   help="torch intra-op threads (default: OMP_NUM_THREADS when set, else on a CPU the usable cores "
                        "less one per loader worker)")
    p.add_argument("--cache", choices=CACHE_MODES, default="auto",
                   help="keep the decoded training images in memory: ram, no, or auto (only without --workers, "
                        "when they fit in 1 GiB and a quarter of the free memory)")
    p.add_argument("--optimizer", choices=OPTIMIZERS, default=None,
                   help="optimizer (default: the model family's, SGD; AdamW for YOLO-FastestV2)")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR schedule (default linear)")
    p.add_argument("--schedule-epochs", type=int, default=0, metavar="T",
                   help="this run is part of a T-epoch LR schedule (with warm-up) instead of its own: e.g. the "
                        "fine-tune after a cut continuing the sparse stage's schedule (0 = its own --epochs)")
    p.add_argument("--schedule-start", type=int, default=0, metavar="N",
                   help="with --schedule-epochs: this run's first epoch is epoch N of that schedule")
    p.add_argument("--nbs", type=int, default=64, help="nominal batch size (= --batch-size: no accumulation)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default 0)")
    p.add_argument("--project", default="runs/finetune", help="parent of run folders (default runs/finetune)")
    p.add_argument("--name", default="exp", help="run folder name (default exp, then exp2, ...)")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    p.add_argument("--resume", nargs="?", const=True, default=False,
                   help="continue a run: its last.pt, its folder, or nothing for the newest run in --project")
    p.add_argument("--noval", action="store_true", help="score only after the final epoch")
    p.add_argument("--val-every", type=int, default=1, help="score every N epochs (and after the last)")
    p.add_argument("--close-mosaic", type=int, default=0, help="turn mosaic off for the last N epochs")
    p.add_argument("--freeze-bn-stats", action="store_true",
                   help="BatchNorms use their running statistics while training (their scale and shift still learn)")
    p.add_argument("--freeze", nargs="+", type=int, default=[0],
                   help="freeze layers: N = first N layers, or a list of layer indices")
    p.add_argument("--new-head", action="store_true",
                   help="train a new Detect head for the data's classes even when the model has as many (a model "
                        "for other classes; without it the trained head is kept and only renamed)")
    p.add_argument("--label-smoothing", type=float, default=None, help="overrides hyp label_smoothing")
    p.add_argument("--sparsity", type=float, default=0.0,
                   help="sparse training: L1 rate on BatchNorm scales (e.g. 0.001); 0 = plain training")
    p.add_argument("--sparsity-schedule", choices=SCHEDULES, default="constant",
                   help="constant; linear decay of the rate to 0 over the run; ramp: a rise from 0 to the rate")
    p.add_argument("--sparsity-layers", choices=LAYER_CHOICES, default="all",
                   help="all BatchNorms, or prunable: only those of channels the pruner can remove one by one "
                        "(not residual adds, RepVGG branch sums, shuffled channels)")
    p.add_argument("--sparsity-target", default="", metavar="flops=F|params=F|ratio=R",
                   help="targeted sparse training: penalise only the channels a prune to this target would remove "
                        "(re-chosen every epoch; default --min-keep/--round-to of prune.py)")
    p.add_argument("--teacher", default="",
                   help="knowledge distillation: also learn the outputs of this model (the unpruned one; same "
                        "classes, levels, anchors and strides) on the same augmented batches")
    p.add_argument("--distill-weight", type=float, default=None, metavar="G",
                   help="overrides hyp distill, the total distillation gain (default 1.0; needs --teacher)")
    p.add_argument("--time-limit", type=float, default=0.0, metavar="MINUTES",
                   help="stop after the epoch that crosses this much training time (the LR schedule still "
                        "spans --epochs); 0 = no limit")
    p.add_argument("--time-limit-fit", action="store_true",
                   help="with --time-limit: lower --epochs to what fits instead (re-estimated after every epoch), "
                        "so the LR schedule still completes")
    p.add_argument("--no-amp", dest="amp", action="store_false", help="no mixed precision on CUDA")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bars")
    p.add_argument("--strict", action="store_true",
                   help="stop (exit 2) on any bad label row, clipped box, unreadable image or non-image file in the "
                        "train or val split, instead of a warning that counts what was skipped")
    return p


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.sparsity_target:
        try:
            args.sparsity_target = parse_target(args.sparsity_target)
        except ValueError as e:
            parser.error(str(e))
        if args.sparsity <= 0:
            parser.error("--sparsity-target needs --sparsity > 0 (the L1 rate on the targeted channels)")
    else:
        args.sparsity_target = {}
    args.hyp_overrides = {} if args.label_smoothing is None else {"label_smoothing": args.label_smoothing}
    if args.distill_weight is not None:
        if not args.teacher:
            parser.error("--distill-weight needs --teacher (the model to distil from)")
        args.hyp_overrides["distill"] = args.distill_weight
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    debug = bool(os.environ.get("YOLO_SLIM_DEBUG"))
    try:
        return run_cli(_run, args, debug=debug)  # Ctrl-C / SIGTERM: 130 / 143, the trainer printed how to resume
    except NonFiniteLossError:
        return 1  # the trainer printed the one-line reason


def _run(args: argparse.Namespace) -> None:
    with data_checks(strict=args.strict):
        result = train(args)
    if result.run_dir is not None:
        m = result.metrics
        print(f"done: {result.epochs} epochs, {result.optimizer_steps} optimizer steps; "
              f"mAP50 {m.get('map50', float('nan')):.3f} mAP50-95 {m.get('map', float('nan')):.3f}; "
              f"best {result.best}, last {result.last}", flush=True)


if __name__ == "__main__":
    sys.exit(main())
