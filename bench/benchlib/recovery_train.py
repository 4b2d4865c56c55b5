"""bench/recovery.py's training side: what makes two runs the same run (the recipe), and one fine-tune that
resumes an interrupted attempt of the same recipe."""

from __future__ import annotations

import argparse
import json
import math
import shutil
from pathlib import Path

from finetune.runs import read_results

RECIPE_KEYS = (
    "epochs",
    "minutes",
    "fit",
    "imgsz",
    "batch_size",
    "lr0",
    "warmup_epochs",
    "accumulate",
    "distill_weight",
    "steps",
    "step_epochs",
    "reconstruct",
    "seed",
    "val_every",
)

# in the recipe only when on: results recorded before these existed keep matching
LATER_RECIPE_KEYS = {"feature_gain": 0.0, "keep_detect_inputs": False, "hyp": {}, "freeze_bn_stats": False}


def recipe_of(args: argparse.Namespace) -> dict:
    """What makes two runs the same run: a recorded result is reused only when this matches."""
    recipe = {k: getattr(args, k) for k in RECIPE_KEYS}
    recipe.update({k: getattr(args, k) for k, off in LATER_RECIPE_KEYS.items() if getattr(args, k) != off})
    return recipe


def scores(res: dict) -> dict:
    return {"map": float(res.get("map", math.nan)), "map50": float(res.get("map50", math.nan))}


def best_row(run_dir: Path) -> dict:
    """The scored results.csv row with the highest fitness (0.1 mAP50 + 0.9 mAP50-95)."""
    rows = [r for r in read_results(run_dir / "results.csv") if not math.isnan(r.get("fitness", math.nan))]
    if not rows:
        return {"map": math.nan, "map50": math.nan, "epoch": None}
    r = max(rows, key=lambda r: float(r["fitness"]))
    return {"map": float(r["metrics/mAP_0.5:0.95"]), "map50": float(r["metrics/mAP_0.5"]), "epoch": int(r["epoch"])}


def train_options(args: argparse.Namespace, name: str, weights: str, teacher: Path | None, data: Path,
                  minutes: float, epochs: int):
    """The trainer's options for one run: the recipe's LR, warm-up and (for teacher runs) distillation gains."""
    from finetune.trainer import TrainOptions

    overrides = {"lr0": args.lr0, "warmup_epochs": args.warmup_epochs}
    if teacher is not None and args.distill_weight is not None:
        overrides["distill"] = args.distill_weight
    if teacher is not None and args.feature_gain:
        overrides["distill_feat"] = args.feature_gain
    overrides.update(args.hyp)
    return TrainOptions(
        data=str(data),
        weights=weights,
        epochs=epochs,
        batch_size=args.batch_size,
        imgsz=args.imgsz,
        nbs=64 if args.accumulate else args.batch_size,
        hyp_overrides=overrides,
        device=args.device,
        workers=args.workers,
        seed=args.seed,
        project=str(args.project),
        name=name,
        exist_ok=True,
        val_every=args.val_every,
        teacher=str(teacher) if teacher else "",
        freeze_bn_stats=args.freeze_bn_stats,
        time_limit=minutes,
        time_limit_fit=args.fit,
    )


def finetune(
    args: argparse.Namespace,
    name: str,
    start: dict,
    teacher: Path | None,
    data: Path,
    fresh: bool,
    minutes: float | None = None,
    epochs: int | None = None,
) -> dict:
    """Fine-tune one run (or one step of it); an interrupted earlier attempt with the same recipe resumes from its
    last.pt."""
    from finetune.trainer import TrainOptions, train
    from yolo.checkpoint import read_checkpoint

    minutes = args.minutes if minutes is None else minutes
    run_dir = args.project / name
    last = run_dir / "weights" / "last.pt"
    stamp = run_dir / "recipe.json"  # an interrupted run resumes only under the recipe (and start) it began with
    began = json.dumps({**recipe_of(args), "start": start["weights"]}, sort_keys=True, default=str)
    if run_dir.exists() and (fresh or not stamp.is_file() or stamp.read_text() != began):
        shutil.rmtree(run_dir)
    opt = train_options(args, name, start["weights"], teacher, data, minutes, epochs or args.epochs)
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp.write_text(began)
    if last.is_file():
        print(f"[{name}] resuming {last}", flush=True)
        opt = TrainOptions(resume=str(last), time_limit=minutes, device=args.device, workers=args.workers)
    res = train(opt)
    state = read_checkpoint(res.last)["train_state"]
    return {
        "run_dir": str(res.run_dir),
        "final": str(res.last),
        "epochs": res.epochs,
        "optimizer_steps": res.optimizer_steps,
        "minutes": float(state.get("train_seconds", math.nan)) / 60,
        "best": best_row(Path(res.run_dir)),
        "last": scores(res.metrics),
    }
