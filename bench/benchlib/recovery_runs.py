"""bench/recovery.py's runs and table: each run (pruned or not, with the teacher or not) once per recipe, its raw
record in <out>/recovery_runs/<run>.json, and the table of every run recorded there."""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

from common import runs_dir, write_json

from benchlib.recovery_cuts import STEP_KEEP, iterative_model, prepared_model, step_count
from benchlib.recovery_train import finetune, recipe_of

QUESTION = "recovery"
RUNS: dict[str, tuple[float | None, bool]] = {  # name -> (FLOPs kept target, teacher)
    "unpruned": (None, False),
    "p70": (0.7, False),
    "p70t": (0.7, True),
    "p50": (0.5, False),
    "p50t": (0.5, True),
}


def run_one(args: argparse.Namespace, name: str, weights: Path, data: Path) -> dict:
    """One run, skipped when its result exists for the same recipe (redone from scratch when the recipe changed)."""
    keep, with_teacher = RUNS[name]
    path = runs_dir(QUESTION, args.out) / f"{name}.json"
    recipe = recipe_of(args)
    old = json.loads(path.read_text()) if path.is_file() else None
    if old is not None and old.get("recipe") == recipe and not args.force:
        print(f"[{name}] already done: {path} (--force to redo)", flush=True)
        return old
    fresh = args.force or old is not None  # a result with another recipe: its run folder is stale too
    print(f"[{name}] FLOPs target {keep or 1.0}, teacher {'yes' if with_teacher else 'no'}", flush=True)
    teacher = weights if with_teacher else None
    t0 = time.time()
    if keep is not None and step_count(args, keep) > 1:
        start = iterative_model(args, name, keep, teacher, weights, data, fresh)
        left = max(args.minutes - start["steps_minutes"], 1.0)
        after = finetune(args, name, start, teacher, data, fresh, minutes=left)
        after["minutes"] += start["steps_minutes"]
        after["epochs"] += start["steps_epochs"]
    else:
        start = prepared_model(args, name, keep, weights, data)
        after = finetune(args, name, start, teacher, data, fresh)
    result = {
        "run": name,
        "flops_target": keep,
        "teacher": str(teacher) if teacher else None,
        **start,
        **after,
        "wall_minutes": (time.time() - t0) / 60,
        "recipe": recipe,
    }
    write_json(path, result)
    return result


def with_earlier_runs(results: dict[str, dict], out: Path) -> dict[str, dict]:
    """These runs and those finished earlier (other --runs selections) under <out>/recovery_runs/, in RUNS order."""
    done = runs_dir(QUESTION, out)
    for name in RUNS:
        if name not in results and (done / f"{name}.json").is_file():
            results[name] = json.loads((done / f"{name}.json").read_text())
    return {name: results[name] for name in RUNS if name in results}


def add_ratios(results: dict[str, dict]) -> None:
    """Each run's mAPs as fractions of the unpruned run's (same recipe and budget), when it exists."""
    ref = results.get("unpruned")
    for r in results.values():
        if ref is None:
            r["vs_unpruned"] = None
            continue
        r["vs_unpruned"] = {
            f"{when}_{k}": (r[when][k] / ref[when][k] if ref[when][k] else math.nan)
            for when in ("best", "last")
            for k in ("map", "map50")
        }


def markdown(results: dict[str, dict], args: argparse.Namespace) -> str:
    head = (
        f"### Recovery after pruning: yolov5n, coco128 at {args.imgsz}, {args.epochs} epochs / {args.minutes:g} min "
        f"per run, batch {args.batch_size}{'' if args.accumulate else ' (no accumulation)'}, lr0 {args.lr0}\n\n"
        "mAP on coco128 val (pycocotools) before fine-tuning, then at the best and the last epoch; t = with the "
        "unpruned model as teacher (`--teacher`). Val: the first 128 COCO val2017 images, none seen in training.\n\n"
        + (
            "Pruned runs prune iteratively inside their budget: cuts of equal ratio "
            + (f"({args.steps} of them)" if args.steps else f"(about {1 - STEP_KEEP:.0%} of the FLOPs each)")
            + f", each re-fitted on {args.reconstruct} train images and followed by {args.step_epochs} epochs of "
            "fine-tuning (with the teacher when the run has one), then the fine-tune; 'before' is right after the last "
            "cut, epochs and minutes count everything.\n\n"
            if args.steps != 1
            else "Pruned runs: one-shot prune of yolov5n.pt, then fine-tuning.\n\n"
        )
        + "| run | teacher | FLOPs kept | params | mAP50-95 before | mAP50 before | best mAP50-95 | best mAP50 | "
        "last mAP50-95 | last mAP50 | best mAP50-95 vs unpruned | epochs | minutes |\n"
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|\n"
    )
    lines = []
    for name, r in results.items():
        ratio = (r.get("vs_unpruned") or {}).get("best_map")
        lines.append(
            f"| {name} | {'yes' if r['teacher'] else 'no'} | {r['flops_kept']:.3f} | {r['params'] / 1e6:.2f}M | "
            f"{r['before']['map']:.3f} | {r['before']['map50']:.3f} | {r['best']['map']:.3f} | "
            f"{r['best']['map50']:.3f} | {r['last']['map']:.3f} | {r['last']['map50']:.3f} | "
            f"{'' if ratio is None else format(ratio, '.3f')} | {r['epochs']} | {r['minutes']:.1f} |"
        )
    return head + "\n".join(lines)
