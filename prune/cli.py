"""`prune` and `sweep` subcommands (the top-level prune.py dispatcher calls `register`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from prune.apply import apply_plan
from prune.calib import calib_loader
from prune.config import (
    DEFAULT_MIN_KEEP,
    DEFAULT_ROUND_TO,
    DEFAULT_WARN_GAMMA,
    IMPORTANCES,
    PruneConfig,
    PruneError,
)
from prune.depth import depth_prune
from prune.graph import build_graph
from prune.latency import DEFAULT_ITERATIONS, DEFAULT_TOLERANCE, prune_to_latency
from prune.latency_moves import parse_moves
from prune.plan import plan_pruning
from prune.runs import save_pruned
from prune.scales import check_level_spec, drop_scale
from prune.sweep import DEFAULT_RATIOS, sweep
from yolo.checkpoint import load_model
from yolo.device import select_device
from yolo.fileio import check_writable, increment_run_dir
from yolo.imgsz import max_stride

__all__ = ["register", "run_prune", "run_sweep"]


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("prune", help="prune channels of a YOLOv5 checkpoint (network slimming + DepGraph)",
                       description="Remove the least important channels (BatchNorm |gamma| by default) over the "
                                   "whole model with one global threshold, slice the weights and save a smaller "
                                   "checkpoint plus the prune table in runs/prune/exp*.")  # fmt: skip
    _common(p, name="exp")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--ratio", type=float, help="fraction of the prunable channels REMOVED, in [0, 1)")
    amount.add_argument("--target-flops", type=float, help="fraction of the FLOPs KEPT, in (0, 1] (e.g. 0.5)")
    amount.add_argument("--target-params", type=float, help="fraction of the parameters KEPT, in (0, 1]")
    amount.add_argument("--target-latency", type=float, metavar="MS",
                        help="measured ONNX Runtime median to reach, in ms (this machine, --threads): the plan "
                             "searches on a per-layer latency table (prune.py profile), then times the cut and "
                             "corrects")
    amount.add_argument("--target-speedup", type=float, metavar="X",
                        help="like --target-latency with the budget = the model's measured median / X (X > 1)")
    p.add_argument("--threads", type=int, default=1,
                   help="ONNX Runtime threads the latency budget is measured with (default 1)")
    p.add_argument("--latency-table", default=None, metavar="FILE",
                   help="latency table to reuse or (re)build (default ~/.cache/yolov5-slim/latency/<arch hash>.json)")
    p.add_argument("--latency-tolerance", type=float, default=DEFAULT_TOLERANCE,
                   help=f"accept a cut whose measured median is within this fraction of the budget (default "
                        f"{DEFAULT_TOLERANCE}); up to {DEFAULT_ITERATIONS} cuts are tried")
    p.add_argument("--latency-moves", default="width", metavar="width[,depth]",
                   help="what the latency search may remove: width (channels, default) or width,depth (also whole "
                        "residual blocks when they cost less importance per ms saved; needs --data)")
    p.add_argument("--depth", type=int, default=None, metavar="N",
                   help="also remove N residual Bottlenecks (C3 blocks with a shortcut) whose skipping changes the "
                        "outputs least on --data's training images (--calib-images of them); needs --data")
    p.add_argument("--drop-scale", default=None, metavar="LEVEL",
                   help="remove one detection level (P3, P4, P5, ... or its index, 0 = finest) and the layers that "
                        "only fed it")
    p.add_argument("--recalibrate", type=int, default=0, metavar="N",
                   help="re-estimate BatchNorm statistics on N training images after slicing (needs --data)")
    p.add_argument("--reconstruct", type=int, default=0, metavar="N",
                   help="re-fit the convs that lost inputs by least squares to the unpruned outputs on N training "
                        "images (needs --data; for checkpoints that were not sparse-trained)")
    p.set_defaults(func=run_prune)

    s = sub.add_parser("sweep", help="prune copies at several ratios; report size and (with --data) mAP",
                       description="Prune copies of the model at each ratio (no fine-tuning) and report params, "
                                   "GFLOPs and, with --data, mAP50 / mAP50-95, as a table and a PNG.")  # fmt: skip
    _common(s, name="sweep")
    s.add_argument("--ratios", type=float, nargs="+", default=list(DEFAULT_RATIOS),
                   help="fractions of channels REMOVED to try (default 0.1 0.2 ... 0.9)")
    s.add_argument("--share", type=float, default=0.9,
                   help="name the largest ratio whose mAP50 stays >= share x the unpruned mAP50 (default 0.9)")
    s.set_defaults(func=run_sweep, recalibrate=0, reconstruct=0)


def _common(p: argparse.ArgumentParser, name: str) -> None:
    p.add_argument("--weights", required=True, help="official YOLOv5 .pt or a yolov5-slim checkpoint")
    p.add_argument("--data", default=None, help="data.yaml: calibration images (mean/recalibrate), mAP in sweep")
    p.add_argument("--imgsz", "--img", type=int, default=None, help="image size for GFLOPs (default: checkpoint's)")
    p.add_argument("--importance", choices=IMPORTANCES, default="slim",
                   help="slim: BatchNorm |gamma| (default); l1/l2: filter magnitude; taylor: the loss's first-order "
                        "change on --data's training images (for checkpoints that were not sparse-trained)")
    p.add_argument("--min-keep", type=float, default=DEFAULT_MIN_KEEP,
                   help="per-layer floor: fraction (<1) or count (>=1) of channels kept (default 0.1, >= 1 always)")
    p.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO,
                   help=f"kept channels per layer rounded up to a multiple of N (default {DEFAULT_ROUND_TO})")
    p.add_argument("--ignore", action="append", default=[], metavar="GLOB",
                   help="leave layers matching this module-name pattern alone, e.g. 'model.0.*' (repeatable)")
    p.add_argument("--compensate", choices=("beta", "mean", "none"), default="beta",
                   help="fold removed channels' constant act(beta) (default) or mean input into their consumers")
    p.add_argument("--calib-images", type=int, default=64,
                   help="images for --compensate mean and --importance taylor (default 64)")
    p.add_argument("--warn-gamma", type=float, default=DEFAULT_WARN_GAMMA,
                   help=f"warn when a removed channel has |gamma| above this (default {DEFAULT_WARN_GAMMA})")
    p.add_argument("--batch-size", type=int, default=16, help="batch size for calibration / scoring")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers (default 2)")
    p.add_argument("--project", default="runs/prune", help="parent folder of run folders (default runs/prune)")
    p.add_argument("--name", default=name, help=f"run folder name (default {name}, then {name}2, ...)")
    p.add_argument("--exist-ok", action="store_true", help="reuse project/name instead of incrementing")
    p.add_argument("--device", default="cpu", help="cpu, 0, cuda:0 ... (default cpu)")


def config_from_args(args: argparse.Namespace, imgsz: int | None = None) -> PruneConfig:
    """The flags as a PruneConfig (checked as it is built; an error names the flag). `imgsz` defaults to
    --imgsz, else 640, until the checkpoint's own size is known."""
    return PruneConfig.from_flags(
        ratio=getattr(args, "ratio", None), target_flops=getattr(args, "target_flops", None),
        target_params=getattr(args, "target_params", None), target_latency=getattr(args, "target_latency", None),
        target_speedup=getattr(args, "target_speedup", None), importance=args.importance, min_keep=args.min_keep,
        round_to=args.round_to, ignore=tuple(args.ignore or ()), compensate=args.compensate,
        recalibrate=int(getattr(args, "recalibrate", 0) or 0), reconstruct=int(getattr(args, "reconstruct", 0) or 0),
        calib_images=args.calib_images, warn_gamma=args.warn_gamma, imgsz=imgsz or args.imgsz or 640,
    )  # fmt: skip


def _load(args: argparse.Namespace):
    device = select_device(args.device)
    model, meta = load_model(args.weights, device)
    imgsz = int(args.imgsz or meta.get("imgsz") or 640)
    return model, meta, imgsz, device


def _calib(args, config: PruneConfig, model):
    if not config.needs_images:
        return None
    if not args.data:
        raise PruneError("--importance taylor, --compensate mean, --recalibrate and --reconstruct need training "
                         "images: give --data")
    n = config.images_needed
    stride = max_stride(model)
    return calib_loader(args.data, config.imgsz, n, args.batch_size, stride, args.workers)


def _console():
    # start-up: rich loads only when a command prints (prune.py imports every command module)
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 140)


def run_prune(args: argparse.Namespace) -> dict:
    config_from_args(args)  # bad flags fail here, before the checkpoint loads
    _check_moves(args)
    save_dir = check_writable(increment_run_dir(args.project, args.name, args.exist_ok), "--project/--name")
    model, meta, imgsz, _ = _load(args)
    config = config_from_args(args, imgsz)
    model, steps = _structural_moves(args, model, config.imgsz)
    table = None
    if config.wants_latency:
        model, table = _latency_cut(args, model, config)
    elif any(v is not None for _, v in config.amount_items()):
        calib = _calib(args, config, model)
        graph = build_graph(model, config.imgsz, config.ignore)
        plan = plan_pruning(graph, config, calib_loader=calib)
        model, table = apply_plan(model, plan, calib_loader=calib), plan.table
    path = save_pruned(save_dir, model, meta, table, config, weights=args.weights, steps=steps)
    console = _console()
    for step in steps:
        console.print(step.rich_table())
    if table is not None:
        console.print(table.rich_table())
        for name, why in table.protected:
            console.print(f"[yellow]protected[/yellow] {name}: {why}")
        for w in table.warnings:
            console.print(f"[bold yellow]warning:[/bold yellow] {w}")
    for line in [s.summary_line() for s in steps] + ([table.summary_line()] if table is not None else []):
        console.print(line)
    files = ", ".join([f"{s.stem}.csv/.json/.txt" for s in steps] + (["prune_table.csv/.json/.txt"] if table else []))
    console.print(f"saved {path} and {files} in {save_dir}")
    return {"save_dir": str(save_dir), "weights": str(path), "table": table, "steps": steps}


def _stderr(message: str) -> None:
    print(message, file=sys.stderr)


def _latency_cut(args: argparse.Namespace, model, config: PruneConfig) -> tuple:
    """--target-latency / --target-speedup: the predictor and timer come from the dispatcher (prune.py sets
    `latency_tools`: prune/ runs no exported model itself); errors name the flags."""
    tools = getattr(args, "latency_tools", None)
    if tools is None:
        raise PruneError(f"--{config.amount[0].replace('_', '-')} needs ONNX Runtime timing: run it through prune.py")
    if not 0 < args.latency_tolerance < 1 or args.threads < 1:
        raise PruneError(f"--latency-tolerance {args.latency_tolerance} must be in (0, 1) and --threads >= 1")
    calib = _calib(args, config, model)
    moves = parse_moves(args.latency_moves)
    images = None
    if "depth" in moves:
        images = calib_loader(args.data, config.imgsz, config.calib_images, args.batch_size, max_stride(model),
                              args.workers)  # fmt: skip
    try:
        predictor, measure, facts = tools(model, config, threads=args.threads, path=args.latency_table, log=_stderr)
        pruned, table = prune_to_latency(model, config, predictor, measure, calib_loader=calib,
                                         tolerance=args.latency_tolerance, log=_stderr, moves=moves,
                                         images=images)  # fmt: skip
    except PruneError as e:
        raise PruneError(PruneConfig.flag_names(str(e))) from None
    table.latency.update(facts)
    return pruned, table


def _check_moves(args: argparse.Namespace) -> None:
    """What can be checked before the checkpoint loads: something to do, and the structural flags' form."""
    depth, scale = getattr(args, "depth", None), getattr(args, "drop_scale", None)
    amounts = (getattr(args, k, None) for k in ("ratio", "target_flops", "target_params", "target_latency",
                                                "target_speedup"))
    if depth is None and scale is None and all(v is None for v in amounts):
        raise PruneError("nothing to prune: give --ratio, --target-flops, --target-params, --target-latency or "
                         "--target-speedup (channels), --depth N "
                         "(residual blocks) or --drop-scale LEVEL (a detection level)")  # fmt: skip
    if depth is not None and depth < 1:
        raise PruneError(f"--depth {depth}: expected a positive number of residual blocks to remove")
    if depth is not None and not args.data:
        raise PruneError("--depth measures each block's importance on training images: give --data")
    if scale is not None:
        check_level_spec(scale, "--drop-scale")
    moves = parse_moves(getattr(args, "latency_moves", "width"))
    if "depth" in moves and not args.data:
        raise PruneError("--latency-moves depth measures each block's importance on training images: give --data")
    if "depth" in moves and getattr(args, "target_latency", None) is None and getattr(args, "target_speedup",
                                                                                     None) is None:
        raise PruneError("--latency-moves depth is a move of the latency search: give --target-latency or "
                         "--target-speedup")


def _structural_moves(args: argparse.Namespace, model, imgsz: int) -> tuple:
    """--drop-scale, then --depth (so block importance is measured on the outputs that remain); (model, tables)."""
    steps = []
    if getattr(args, "drop_scale", None) is not None:
        model, table = drop_scale(model, args.drop_scale, imgsz=imgsz, flag="--drop-scale")
        steps.append(table)
    if getattr(args, "depth", None) is not None:
        images = calib_loader(args.data, imgsz, args.calib_images, args.batch_size, max_stride(model), args.workers)
        model, table = depth_prune(model, args.depth, images, imgsz=imgsz, n_images=args.calib_images,
                                   flag="--depth")  # fmt: skip
        steps.append(table)
    return model, steps


def run_sweep(args: argparse.Namespace) -> dict:
    if not 0 < args.share <= 1:
        raise PruneError(f"--share {args.share} must be in (0, 1]")
    bad = [r for r in args.ratios if not 0 <= r < 1]
    if bad:
        raise PruneError(f"--ratios {bad[0]} is outside [0, 1): ratios are fractions of channels REMOVED")
    save_dir = check_writable(increment_run_dir(args.project, args.name, args.exist_ok), "--project/--name")
    model, meta, imgsz, device = _load(args)
    config = config_from_args(args, imgsz)  # no amount: the sweep supplies each ratio
    calib = _calib(args, config, model)
    console = _console()
    res = sweep(model, args.ratios, data=args.data, config=config, share=args.share, calib_loader=calib,
                log=lambda m: print(m, file=sys.stderr), batch_size=args.batch_size, workers=args.workers,
                device=device)  # fmt: skip
    save_dir.mkdir(parents=True, exist_ok=True)
    res.to_csv(save_dir / "sweep.csv")
    res.to_json(save_dir / "sweep.json")
    png = res.plot(save_dir / "sweep.png")
    console.print(res.rich_table())
    if args.data and res.best_ratio is None:
        console.print(f"no ratio keeps mAP50 >= {args.share:g} x the unpruned model's")
    console.print(f"saved sweep.csv/.json and {Path(png).name} in {save_dir}")
    return {"save_dir": str(save_dir), "result": res}
