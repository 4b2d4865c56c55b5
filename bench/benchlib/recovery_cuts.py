"""bench/recovery.py's pruning side: a run's starting model, cut once or step by step down to its FLOPs target
(each cut re-fitted, --step-epochs of fine-tuning between cuts); finished steps are kept and skipped on a re-run."""

from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import torch
from common import write_json

from benchlib.recovery_train import finetune, scores

STEP_KEEP = 0.93  # FLOPs kept per cut in the default iterative schedule: where the re-fit alone still holds 0.26


def params(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def evaluate(args: argparse.Namespace, model: torch.nn.Module, data: Path) -> dict:
    from yolo.device import select_device
    from yolo.val import evaluate

    return evaluate(model, data, imgsz=args.imgsz, batch_size=args.batch_size, workers=args.workers,
                    device=select_device(args.device), progress=False)  # fmt: skip


def describe_start(args: argparse.Namespace, model: torch.nn.Module, base: torch.nn.Module, path, data: Path) -> dict:
    """A run's starting model: where it is, its size against the unpruned yolov5n, its score before training."""
    from yolo.flops import count_gflops

    before = evaluate(args, model, data)
    gflops = count_gflops(model, args.imgsz)
    return {
        "weights": str(path),
        "flops_kept": gflops / count_gflops(base, args.imgsz),
        "params": params(model),
        "params_kept": params(model) / params(base),
        "gflops": gflops,
        "before": scores(before),
    }


def cut(args: argparse.Namespace, model: torch.nn.Module, keep: float, data: Path):
    """Prune to keep this share of the FLOPs (slim importance, beta compensation, then the least-squares re-fit)."""
    from prune import PruneConfig, prune_model
    from prune.calib import calib_loader
    from yolo.model import detect_convs_pattern

    ignore = (detect_convs_pattern(model),) if args.keep_detect_inputs else ()
    config = PruneConfig(target_flops=keep, imgsz=args.imgsz, reconstruct=args.reconstruct, ignore=ignore)
    loader = calib_loader(data, args.imgsz, args.reconstruct, batch_size=8) if args.reconstruct else None
    return prune_model(model, config, calib_loader=loader)


def prepared_model(args: argparse.Namespace, name: str, keep: float | None, weights: Path, data: Path) -> dict:
    """The run's starting checkpoint (pruned once per FLOPs target, shared by the teacher / no-teacher runs)."""
    from prune import save_pruned
    from yolo.checkpoint import load_model

    tag = f"{'unpruned' if keep is None else f'keep{round(keep * 100)}'}_{args.imgsz}_rec{args.reconstruct}"
    tag += "_detect_whole" if args.keep_detect_inputs and keep is not None else ""
    info_path = args.project / "start" / tag / "start.json"
    if info_path.is_file() and not args.force:
        return json.loads(info_path.read_text())
    base, meta = load_model(weights)
    if keep is None:
        model, path = base, weights
    else:
        model, table = cut(args, base, keep, data)
        path = save_pruned(info_path.parent, model, meta, table, weights=weights)
    info = describe_start(args, model, base, path, data)
    write_json(info_path, info)
    return info


def step_count(args: argparse.Namespace, keep: float) -> int:
    """Cuts to reach `keep`: --steps, or one per ~7% of the FLOPs removed (each cut keeps about 0.93)."""
    return args.steps or max(1, math.ceil(math.log(keep) / math.log(STEP_KEEP) - 1e-6))


def cut_step(args: argparse.Namespace, name: str, i: int, n: int, keep: float, current: str, base_gflops: float,
             teacher: Path | None, data: Path, fresh: bool) -> dict:
    """Step i of n: cut `current` to keep**(i/n) of yolov5n's FLOPs, score it, and fine-tune it unless it is the
    last step; the step's record (step.json) names the checkpoint the next step starts from."""
    from prune import save_pruned
    from yolo.checkpoint import load_model
    from yolo.flops import count_gflops

    record = args.project / f"{name}_steps" / f"step{i}" / "step.json"
    t0 = time.time()
    model, meta = load_model(current)
    goal = keep ** (i / n)
    pruned, table = cut(args, model, goal * base_gflops / count_gflops(model, args.imgsz), data)
    path = save_pruned(record.parent, pruned, meta, table, weights=current)
    step = {"step": i, "goal": goal, "flops_kept": count_gflops(pruned, args.imgsz) / base_gflops,
            "pruned": str(path), "after": str(path), "cut_minutes": (time.time() - t0) / 60, "train_minutes": 0.0,
            "epochs": 0, "cut": scores(evaluate(args, pruned, data))}  # fmt: skip
    if i < n:
        ft = finetune(args, f"{name}_s{i}", {"weights": str(path)}, teacher, data, fresh, epochs=args.step_epochs)
        step.update(after=ft["final"], train_minutes=ft["minutes"], epochs=ft["epochs"], last=ft["last"])
    write_json(record, step)
    return step


def iterative_model(
    args: argparse.Namespace, name: str, keep: float, teacher: Path | None, weights: Path, data: Path, fresh: bool
) -> dict:
    """Iterative pruning: cut to keep**(i/n) of yolov5n's FLOPs at step i (re-fit each time), fine-tune
    --step-epochs between cuts. Returns the last cut's start description, with the steps and their minutes.
    Finished steps are kept (<project>/<name>_steps/step<i>/step.json) and skipped on a re-run."""
    from yolo.checkpoint import load_model
    from yolo.flops import count_gflops

    n = step_count(args, keep)
    root = args.project / f"{name}_steps"
    info_path = root / "start.json"
    if fresh and root.exists():
        shutil.rmtree(root)
    if info_path.is_file():
        return json.loads(info_path.read_text())
    base, _ = load_model(weights)
    base_gflops = count_gflops(base, args.imgsz)
    current, steps = str(weights), []
    for i in range(1, n + 1):
        record = root / f"step{i}" / "step.json"
        if record.is_file():
            step = json.loads(record.read_text())
        else:
            step = cut_step(args, name, i, n, keep, current, base_gflops, teacher, data, fresh)
        after = step.get("last", {}).get("map", math.nan)
        print(f"[{name}] step {i}/{n}: FLOPs kept {step['flops_kept']:.3f}, mAP50-95 after the cut "
              f"{step['cut']['map']:.3f}, after its fine-tune {after:.3f}", flush=True)  # fmt: skip
        steps.append(step)
        current = step["after"]
    final, _ = load_model(steps[-1]["pruned"])
    info = describe_start(args, final, base, steps[-1]["pruned"], data)
    info["steps"] = steps
    info["steps_minutes"] = sum(s["cut_minutes"] + s["train_minutes"] for s in steps)
    info["steps_epochs"] = sum(s["epochs"] for s in steps)
    write_json(info_path, info)
    return info
