"""One bench/helmets.py run: the pipeline command, the unpruned yardstick (trained, adopted or referenced), and
the run's record (figures, checks, the gap's bootstrap interval, its table)."""

from __future__ import annotations

import argparse
import json
import math
import shlex
import sys
from pathlib import Path

from common import REPO, cpu_isa, machine

from finetune.runs import read_results
from pipeline.state import STATE_FILE, PipelineState


def pipeline_command(args: argparse.Namespace, shared: Path, dense_epochs: int) -> list[str]:
    """`prune.py pipeline` with the recipe's flags, then the run's extra ones (`--reconstruct 128` unless given)."""
    return [sys.executable, str(REPO / "prune.py"), "pipeline",
            "--weights", str(shared / "weights" / "yolov5n.pt"),
            "--data", str(shared / "datasets" / "helmets" / "helmets.yaml"),
            "--imgsz", "320", "--batch-size", "16", "--nbs", str(args.nbs),
            "--sparse-epochs", str(args.sparse_epochs), "--sparsity", str(args.sparsity),
            "--sparsity-mode", args.sparsity_mode, "--sparsity-schedule", args.sparsity_schedule,
            *(["--finetune-hyp", args.finetune_hyp] if args.finetune_hyp else []),
            "--target-flops", str(args.target_flops), "--finetune-epochs", str(args.finetune_epochs),
            "--dense-epochs", str(dense_epochs), "--latency-runs", "30", "--threads", "1",
            "--project", args.workdir, "--name", "exp", "--quiet", *(["--seed", str(args.seed)] if args.seed else []),
            *(["--reconstruct", str(args.reconstruct)] if args.reconstruct and "--reconstruct" not in args.extra
              else []), *args.extra]  # fmt: skip


def read_reference(path: Path, seed: int, epochs: int) -> dict:
    """The unpruned model's figures from an earlier result of this script, checked to be the same comparison."""
    try:
        doc = json.loads(path.read_text())
        dense = doc["figures"]["models"]["dense"]
    except (OSError, ValueError, KeyError) as e:
        sys.exit(f"--reference {path}: not a bench/helmets.py result with an unpruned model ({e})")
    argv = shlex.split(doc["figures"]["command"])
    their_seed = int(argv[argv.index("--seed") + 1]) if "--seed" in argv else 0
    their_epochs = int(argv[argv.index("--dense-epochs") + 1])
    if (their_seed, their_epochs) != (seed, epochs):
        sys.exit(f"--reference {path}: its unpruned model is seed {their_seed}, {their_epochs} epochs; this run is "
                 f"seed {seed}, {epochs} epochs")
    here, there = (cpu_isa(m.get("cpu") or {}) or "?" for m in (machine(), doc["machine"]))
    cpu = doc["machine"]["cpu"]
    dense = {"role": "dense", "params": dense["params"], "gflops": dense["gflops"],
             "metrics": {"map50": dense["map50"], "map": dense["map"]}}  # the report's shape
    return {"file": path.name, "command": doc["figures"]["command"], "dense": dense, "same_host": here == there,
            "machine_cpu": f"{cpu.get('model')} ({there})", "host": f"trained on {cpu.get('model')} ({there})"}


def gap_bootstrap(unpruned: str, pruned: str, data: Path, imgsz: int = 320) -> dict:
    """Paired bootstrap of the unpruned - pruned mAP50 over the val images (yolo.metrics.paired_bootstrap)."""
    from yolo.checkpoint import load_model
    from yolo.data import load_data_yaml
    from yolo.metrics import DetectionStats, paired_bootstrap
    from yolo.val import evaluate

    cfg = load_data_yaml(data)
    stats = {}
    for role, path in (("unpruned", unpruned), ("pruned", pruned)):
        stats[role] = DetectionStats()
        evaluate(load_model(path)[0], cfg, imgsz=imgsz, batch_size=16, workers=0, progress=False, stats=stats[role])
    return paired_bootstrap(stats["unpruned"], stats["pruned"], cfg.names)


def epoch_seconds(stage: dict) -> float:
    """A training stage's summed epoch times from its results.csv (0 if none): unlike the stage's wall time in
    pipeline.json, it survives a run that was killed and resumed (a kill leaves no time to record the attempt)."""
    last = stage.get("outputs", {}).get("last")
    if not last:
        return 0.0
    rows = read_results(Path(last).parents[1] / "results.csv")
    return round(sum(t for row in rows if not math.isnan(t := float(row.get("time", math.nan)))), 1)


def adopt_dense_stage(donor: Path, run: Path, epochs: int) -> None:
    """Copy the finished `dense` stage (and the baseline it hangs off) from another run folder's pipeline.json.

    The unpruned yardstick is a side branch of the pipeline, so it can be trained in a second folder on the other
    core while this one runs sparse -> prune -> fine-tune. The pipeline still checks the copied stage's key against
    its own inputs, so a stage trained with other settings is redone, not mixed in.
    """
    if not (donor / STATE_FILE).is_file():
        sys.exit(f"--dense-from {donor}: no {STATE_FILE} there (expected a pipeline run folder, <workdir>/exp)")
    source = PipelineState(donor).stages
    dense = source.get("dense")
    if dense is None or dense.status != "done":
        sys.exit(f"--dense-from {donor}: its unpruned (dense) stage is not finished")
    if dense.params.get("epochs") != epochs:
        sys.exit(f"--dense-from {donor}: its unpruned stage trained {dense.params.get('epochs')} epochs, "
                 f"this comparison needs {epochs}")
    target = PipelineState(run)
    base = target.stages.get("baseline")
    if base and base.key != source["baseline"].key:
        sys.exit(f"--dense-from {donor}: it started from other weights, data or image size than {run}")
    adopted = {"baseline": source["baseline"], "dense": dense}
    target.stages = {**adopted, **{k: v for k, v in target.stages.items() if k not in adopted}}
    run.mkdir(parents=True, exist_ok=True)
    target.save()
    print(f"unpruned stage adopted from {donor} ({dense.seconds / 60:.0f} min, {epochs} epochs)")


def pipeline_seconds(stage_seconds: dict[str, float]) -> float:
    """The pipeline's own time: every stage but the unpruned comparison run (the issue's 2 hours)."""
    return sum(s for k, s in stage_seconds.items() if not k.startswith("dense"))


def run_figures(run: Path, cmd: list[str], wall: float, reference: dict | None) -> tuple[dict, dict]:
    """(figures, models) of a finished pipeline run folder: stage times and each model's size and scores; the
    unpruned model is the reference's when one was given."""
    report = json.loads((run / "report" / "report.json").read_text())
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    seconds = {k: v.get("seconds", 0.0) for k, v in stages.items()}
    models = {m["role"]: m for m in report["models"]}
    if reference:
        models["dense"] = reference["dense"]
    pipeline_s = pipeline_seconds(seconds)
    train_s = {k: s for k, v in stages.items() if (s := epoch_seconds(v))}
    figures = {
        "command": " ".join(shlex.quote(c) for c in cmd),
        "wall_seconds": round(wall, 1),
        "pipeline_seconds_without_dense": round(pipeline_s, 1),
        "stage_seconds": seconds,
        "stage_epoch_seconds": train_s,
        "models": {r: {"params": m["params"], "gflops": m["gflops"], "map50": m["metrics"]["map50"],
                       "map": m["metrics"]["map"]} for r, m in models.items()},
        "flops_ratio": models["finetuned"]["gflops"] / models["baseline"]["gflops"],
    }
    return figures, models


def judge(figures: dict, models: dict, target_flops: float, reference: dict | None, data: Path) -> str:
    """Adds the checks (and the gap's bootstrap when both weights are here) to `figures`; returns the sentence
    that says how far the gap can be trusted."""
    fin, dense = models["finetuned"], models.get("dense")
    checks = {f"FLOPs <= {target_flops:g}x": figures["flops_ratio"] <= target_flops + 1e-9,
              "pipeline <= 2 h": pipeline_seconds(figures["stage_seconds"]) <= 7200}
    spread = ""
    if dense:
        figures["map50_vs_dense"] = fin["metrics"]["map50"] - dense["metrics"]["map50"]
        checks["mAP50 within 2 points of the unpruned model"] = figures["map50_vs_dense"] >= -0.02
    if dense and reference:
        figures["reference"] = {k: reference[k] for k in ("file", "command", "machine_cpu")}
        spread = (f" The unpruned model is not trained here: its figures are those of {reference['file']} (same seed "
                  f"and epochs, {reference['host']})" + ("" if reference["same_host"] else
                                                         ", on another kind of CPU, so not the very same weights")
                  + "; no bootstrap without its weights.")
    elif dense:
        boot = gap_bootstrap(dense["path"], fin["path"], data)
        figures["map50_gap_bootstrap"] = boot
        spread = (f" How much of the gap is the luck of the {boot['images']} val images (paired bootstrap, "
                  f"{boot['rounds']} draws, YOLOv5's AP): unpruned minus pruned {100 * boot['difference']:.1f} "
                  f"points, sd {100 * boot['sd']:.1f}, 95% interval {100 * boot['ci95'][0]:.1f} to "
                  f"{100 * boot['ci95'][1]:.1f}; each model's own mAP50 sd {100 * boot['sd_a']:.1f} (unpruned) "
                  f"and {100 * boot['sd_b']:.1f} (pruned).")
    figures["checks"] = checks
    return spread


def markdown(args: argparse.Namespace, figures: dict, models: dict, reference: dict | None, spread: str) -> str:
    """The run's own table: each model's size and scores, the pipeline's minutes and the checks."""
    total = args.sparse_epochs + args.finetune_epochs
    stages, train_s = figures["stage_seconds"], figures["stage_epoch_seconds"]
    dense_s = max(stages.get("dense", 0.0), train_s.get("dense", 0.0))
    rows = "\n".join(
        f"| {r} | {m['params'] / 1e6:.3f} M | {m['gflops']:.3f} | {m['metrics']['map50']:.3f} | "
        f"{m['metrics']['map']:.3f} |" for r, m in models.items()
    )
    return (
        f"### Helmets (a user's own data): yolov5n.pt -> 2 classes at 320, sparse {args.sparse_epochs} + fine-tune "
        f"{args.finetune_epochs} epochs vs unpruned {total} epochs" + (f", seed {args.seed}" if args.seed else "")
        + (f", to {args.target_flops:g}x FLOPs" if args.target_flops != 0.5 else "")
        + (f", `{shlex.join(args.extra)}`" if args.extra else "")
        + "\n\n"
        f"Pipeline {pipeline_seconds(stages) / 60:.0f} min ("
        + (f"the unpruned model from {reference['file']}" if reference
           else f"the unpruned comparison run another {dense_s / 60:.0f} min") + ").\n\n"
        "| model | params | GFLOPs | mAP50 | mAP50-95 |\n|---|---|---|---|---|\n" + rows + "\n\n"
        + "Checks: " + ", ".join(f"{k}: {'yes' if v else '**no**'}" for k, v in figures["checks"].items()) + "."
        + spread
    )
