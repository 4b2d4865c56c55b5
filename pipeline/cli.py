"""`pipeline` (checkpoint -> shrunken model in one command) and `demo` (the same on synthetic data)."""

from __future__ import annotations

import argparse
from dataclasses import fields
from pathlib import Path

import yaml

from pipeline.latency import profile_and_check
from pipeline.options import SPARSITY_MODES, PipelineOptions
from pipeline.run import run_pipeline
from prune.config import DEFAULT_MIN_KEEP, DEFAULT_ROUND_TO, IMPORTANCES, PruneConfig, PruneError
from sparsity.bn_l1 import SCHEDULES
from yolo.checkpoint import load_model
from yolo.data import CACHE_MODES, check_splits, data_checks
from yolo.model import load_model_yaml
from yolo.synthetic import make_synthetic_dataset

DEMO_MODEL = {
    # YOLOv5n itself (from scratch, 3 classes): it learns the demo shapes in a few minutes on two cores at 128 px
    # and has the coupling of the real models (C3 residuals, SPPF, concats, 3-level Detect). At width 0.125 it
    # stayed under mAP50 0.45 after the same 750 steps.
    "base": "yolov5n",
    "width_multiple": 0.25,
    "depth_multiple": 0.33,
}
DEMO_HYP = Path(__file__).resolve().parents[1] / "finetune" / "hyps" / "demo.yaml"


def _add_common(p: argparse.ArgumentParser, d: PipelineOptions) -> None:
    p.add_argument("--imgsz", "--img", type=int, default=d.imgsz, help=f"train/score size (default {d.imgsz})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="batch size of training and scoring")
    p.add_argument("--device", default=d.device, help="cpu, 0, 0,1 ...")
    p.add_argument("--workers", type=int, default=d.workers,
                   help="loader workers (default: the training stages pick, 0 on a CPU with at most 2 cores, else 8; "
                        "scoring uses 2)")
    p.add_argument("--train-threads", type=int, default=d.train_threads, metavar="N",
                   help="training stages' torch threads (default: OMP_NUM_THREADS when set, else the usable cores "
                        "less one per loader worker; --threads is the latency measurement's)")
    p.add_argument("--cache", choices=CACHE_MODES, default=d.cache,
                   help="training stages: keep decoded images in memory (ram, no, auto: only without workers)")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed")
    p.add_argument("--hyp", default=d.hyp, help="hyperparameter yaml for the training stages")
    p.add_argument("--finetune-hyp", default=d.finetune_hyp,
                   help="hyperparameter yaml for the fine-tune stage(s) only (default: --hyp); "
                        "finetune/hyps/finetune.yaml: lr0 0.005 without warm-up")
    p.add_argument("--nbs", type=int, default=d.nbs, help="nominal batch (= --batch-size: no accumulation)")
    p.add_argument("--optimizer", default=d.optimizer, choices=("SGD", "AdamW"),
                   help="training optimizer (default: the model family's, SGD; AdamW for YOLO-FastestV2)")
    p.add_argument("--cos-lr", action="store_true", help="cosine LR schedule (default linear)")
    p.add_argument("--lr-schedule", default=d.lr_schedule, choices=("restart", "continuous"),
                   help="restart: the sparse stage and each fine-tune run their own LR schedule; continuous: one "
                        "schedule over all their epochs (the fine-tune picks up the LR where the sparse stage left "
                        "it, after its warm-up), so the sparse stage does not anneal and the penalty keeps its "
                        "strength")
    p.add_argument("--dense-epochs", type=int, default=d.dense_epochs,
                   help="also train the model WITHOUT the penalty for this many epochs, for comparison (0 = no)")
    p.add_argument("--sparse-epochs", type=int, default=d.sparse_epochs,
                   help="epochs of the sparse-training stage (BN-L1); 0 prunes the given weights directly")
    p.add_argument("--sparsity", type=float, default=d.sparsity, help="L1 rate on BatchNorm scales")
    p.add_argument("--sparsity-schedule", default=d.sparsity_schedule, choices=SCHEDULES,
                   help="constant; linear (decay to 0); ramp (rise from 0 to --sparsity)")
    p.add_argument("--sparsity-mode", default=d.sparsity_mode, choices=SPARSITY_MODES,
                   help="uniform: the penalty acts on every BatchNorm; targeted: only on the channels the prune "
                        "target below would remove (re-chosen every epoch)")
    amount = p.add_mutually_exclusive_group()
    amount.add_argument("--ratio", type=float, default=None, help="fraction of prunable channels REMOVED")
    amount.add_argument("--target-flops", type=float, default=None,
                        help=f"fraction of FLOPs KEPT (default {d.target_flops})")
    amount.add_argument("--target-params", type=float, default=None, help="fraction of parameters KEPT")
    amount.add_argument("--target-latency", type=float, default=None, metavar="MS",
                        help="measured ONNX Runtime median to reach, in ms (as prune --target-latency; checked "
                             "against the floor before training; --latency-threads threads)")
    amount.add_argument("--target-speedup", type=float, default=None, metavar="X",
                        help="budget = the prune stage input's measured median / X (as prune --target-speedup)")
    p.add_argument("--latency-threads", type=int, default=d.latency_threads, metavar="N",
                   help=f"ONNX Runtime threads the latency budget is measured with (default {d.latency_threads}; "
                        "--threads are the report's)")
    p.add_argument("--latency-table", default=d.latency_table, metavar="FILE",
                   help="latency table to reuse or build (as prune --latency-table)")
    p.add_argument("--latency-tolerance", type=float, default=d.latency_tolerance,
                   help=f"as prune --latency-tolerance (default {d.latency_tolerance})")
    p.add_argument("--latency-moves", default=d.latency_moves, metavar="width[,depth]",
                   help="what the latency search may remove: width (default) or width,depth (also residual blocks, "
                        "as prune --latency-moves)")
    p.add_argument("--depth", type=int, default=None, metavar="N",
                   help="also remove N residual blocks before the channel cut (as prune --depth)")
    p.add_argument("--drop-scale", default=None, metavar="LEVEL",
                   help="also remove a detection level (P3, P4, P5 or its index) before the channel cut (as prune)")
    p.add_argument("--importance", default=d.importance, choices=IMPORTANCES, help="channel importance (as prune)")
    p.add_argument("--min-keep", type=float, default=d.min_keep, help="per-layer floor (fraction, or count >= 1)")
    p.add_argument("--round-to", type=int, default=d.round_to, help="kept channels rounded to a multiple of N")
    p.add_argument("--ignore", action="append", default=[], help="glob of module names to leave alone (repeatable)")
    p.add_argument("--compensate", default=d.compensate, choices=("beta", "mean", "none"), help="as prune --compensate")
    p.add_argument("--recalibrate", type=int, default=d.recalibrate, help="re-estimate BN stats on N images")
    p.add_argument("--reconstruct", type=int, default=d.reconstruct,
                   help="least-squares re-fit of the convs that lost inputs on N images (prune --reconstruct)")
    p.add_argument("--finetune-epochs", type=int, default=d.finetune_epochs, help="epochs of the fine-tune stage")
    p.add_argument("--rounds", type=int, default=d.rounds,
                   help="iterative mode: N prune -> fine-tune rounds, each a geometric step toward the target "
                        "(--finetune-epochs split between them); default 1")
    p.add_argument("--teacher", default=d.teacher, metavar="{none,unpruned,PATH}",
                   help="knowledge distillation in the fine-tune stage: 'unpruned' = the model before pruning "
                        "(the sparse-trained one), or a checkpoint; default none")
    p.add_argument("--distill-weight", type=float, default=d.distill_weight,
                   help="total distillation gain (hyp distill, default 1.0); needs --teacher")
    p.add_argument("--close-mosaic", type=int, default=d.close_mosaic, metavar="N",
                   help="fine-tune stage: mosaic off for its last N epochs (default 0: mosaic to the end)")
    p.add_argument("--val-every", type=int, default=d.val_every, help="score every N epochs while training")
    p.add_argument("--int8", action="store_true",
                   help="also quantize the fine-tuned model to int8 (ONNX Runtime; with --formats openvino / ncnn also "
                        "their int8), each kept only if its mAP50-95 is within 0.01 of fp32")
    p.add_argument("--formats", nargs="+", default=[], metavar="FORMAT",
                   help="report stage: also convert the fine-tuned model to these runtimes (openvino, ncnn; optional "
                        "extras), time and score them beside ONNX Runtime, and name the fastest that holds accuracy")
    p.add_argument("--latency-runs", type=int, default=d.latency_runs, help="timed runs per model (interleaved)")
    p.add_argument("--threads", type=int, nargs="+", default=d.threads,
                   help="ORT thread counts to time (0 = all cores); default 1 0")
    p.add_argument("--project", default=d.project, help="parent of run folders")
    p.add_argument("--name", default=d.name, help="run folder name (resumed if it exists, see --new)")
    p.add_argument("--new", action="store_true", help="start a new run folder (exp2, ...) instead of resuming")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines or progress bars in the training stages")


def register(sub: argparse._SubParsersAction) -> None:
    d = PipelineOptions()
    p = sub.add_parser("pipeline", help="baseline -> sparse training -> prune -> fine-tune -> export -> report",
                       description="Run every stage into one run folder; re-running resumes and skips finished stages.")
    p.add_argument("--weights", default="", help="starting checkpoint: official YOLOv5 .pt or a yolov5-slim .pt")
    p.add_argument("--cfg", default="", help="or a model yaml to train from scratch in the sparse stage")
    p.add_argument("--data", required=True, help="data.yaml")
    p.add_argument("--strict", action="store_true",
                   help="stop (exit 2) on any bad label row, clipped box, unreadable image or non-image file in the "
                        "data, instead of a warning that counts what was skipped")
    _add_common(p, d)
    p.set_defaults(func=run_pipeline_cli)

    dd = demo_defaults()
    q = sub.add_parser("demo", help="the whole pipeline on synthetic data made here (no downloads)",
                       description="Make a synthetic dataset, train a small model from scratch with the sparsity "
                                   "penalty, prune to half the FLOPs, fine-tune, export ONNX and print the report.")
    q.add_argument("--n-train", type=int, default=400, help="synthetic training images")
    q.add_argument("--n-val", type=int, default=100, help="synthetic validation images")
    q.add_argument("--data-dir", default="runs/demo/data", help="where the synthetic dataset is written")
    _add_common(q, dd)
    q.set_defaults(func=run_demo, project="runs/demo", name="exp")
    register_profile(sub)


def register_profile(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("profile", help="time each layer at candidate widths: the latency table --target-latency uses",
                       description="Time every convolution of the model alone in ONNX Runtime at a grid of input x "
                                   "output widths on this machine, fit the rest on whole-model timings, store the "
                                   "table (reused while CPU, ONNX Runtime version, threads, size and model match), "
                                   "then print predicted vs measured latency of the model and of random cuts.")
    r.add_argument("--weights", required=True, help="official YOLOv5 .pt or a yolov5-slim checkpoint")
    r.add_argument("--imgsz", "--img", type=int, default=None, help="input size (default: the checkpoint's, else 640)")
    r.add_argument("--threads", type=int, default=1, help="ONNX Runtime intra-op threads (default 1)")
    r.add_argument("--out", default=None, metavar="FILE",
                   help="table file (default ~/.cache/yolov5-slim/latency/<arch hash>.json)")
    r.add_argument("--round-to", type=int, default=DEFAULT_ROUND_TO, help="widths on the grid are multiples of N")
    r.add_argument("--min-keep", type=float, default=DEFAULT_MIN_KEEP,
                   help="the floor of the narrowest calibration cut (as prune --min-keep)")
    r.add_argument("--checks", type=int, default=2, help="random cuts whose prediction is checked (default 2)")
    r.add_argument("--runs", type=int, default=30, help="interleaved runs per whole model (default 30)")
    r.add_argument("--seed", type=int, default=0, help="seed of the random cuts")
    r.set_defaults(func=run_profile)


def run_profile(args: argparse.Namespace) -> dict:
    if args.threads < 1 or args.checks < 0 or args.runs < 1:
        raise PruneError(f"--threads {args.threads} and --runs {args.runs} must be >= 1, --checks >= 0")
    if args.out and Path(args.out).resolve() == Path(args.weights).resolve():
        raise PruneError(f"--out {args.out}: that is the input weights; give another file")
    model, meta = load_model(args.weights, "cpu")
    imgsz = int(args.imgsz or meta.get("imgsz") or 640)
    config = PruneConfig.from_flags(ratio=0.5, min_keep=args.min_keep, round_to=args.round_to, imgsz=imgsz)
    res = profile_and_check(model.eval(), config, args.threads, args.out, args.checks, args.seed, args.runs)
    print(f"latency table {res['table']}: {res['conv_scale']:.3f} x the convs + {res['rest_a']:.3f} ms + "
          f"{res['rest_b'] * 1e6:.3f} ms per M activations; {args.threads} thread(s) at {imgsz}")
    for name, r in res["check"].items():
        anchored = (f"; anchored on the full model timed beside it {r['anchored_ms']:8.3f} ms, error "
                    f"{r['anchored_error_pct']:+.1f}%" if "anchored_ms" in r else "")
        print(f"  {name:>9}: predicted {r['predicted_ms']:8.3f} ms, measured {r['measured_ms']:8.3f} ms, "
              f"error {r['error_pct']:+.1f}%{anchored}")
    return res


def demo_defaults() -> PipelineOptions:
    """The demo's knobs: sized to finish in about ten minutes on two CPU cores."""
    return PipelineOptions(imgsz=128, batch_size=16, nbs=16, sparse_epochs=35, dense_epochs=0, finetune_epochs=10,
                           sparsity=2e-3, sparsity_schedule="constant", sparsity_mode="uniform", reconstruct=0,
                           target_flops=0.5, optimizer="AdamW",
                           hyp=str(DEMO_HYP), val_every=5, latency_runs=100, threads=[1], project="runs/demo",
                           workers=None)


def options_from_args(args: argparse.Namespace, base: PipelineOptions | None = None) -> PipelineOptions:
    base = base or PipelineOptions()
    values = {f.name: getattr(args, f.name) for f in fields(PipelineOptions) if hasattr(args, f.name)}
    amounts = ("ratio", "target_flops", "target_params", "target_latency", "target_speedup")
    if all(values.get(k) is None for k in amounts):
        values["target_flops"] = base.target_flops
    values["threads"] = list(values.get("threads") or [1])
    opt = PipelineOptions(**{**base.__dict__, **values})
    return opt


def run_pipeline_cli(args: argparse.Namespace) -> dict:
    with data_checks(strict=getattr(args, "strict", False)):
        if getattr(args, "strict", False):
            check_splits(args.data)  # before the run folder is made
        return run_pipeline(options_from_args(args), new=args.new)


def demo_model_cfg() -> dict:
    cfg = load_model_yaml(DEMO_MODEL["base"])
    cfg.update(width_multiple=DEMO_MODEL["width_multiple"], depth_multiple=DEMO_MODEL["depth_multiple"])
    return cfg


def run_demo(args: argparse.Namespace) -> dict:
    data_dir = Path(args.data_dir)
    data_yaml = data_dir / "data.yaml"
    if not data_yaml.is_file():
        print(f"making the synthetic dataset in {data_dir} ({args.n_train} train / {args.n_val} val images)")
        data_yaml = make_synthetic_dataset(data_dir, n_train=args.n_train, n_val=args.n_val, img_size=args.imgsz,
                                           seed=args.seed)
    n_classes = len(yaml.safe_load(Path(data_yaml).read_text())["names"])
    cfg = demo_model_cfg()
    cfg["nc"] = n_classes
    cfg_path = data_dir / "demo_model.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    args.cfg, args.weights, args.data = str(cfg_path), "", str(data_yaml)
    return run_pipeline(options_from_args(args, demo_defaults()), new=args.new)
