"""Real data, real transfer: the whole pipeline on a user's own dataset (../shared/datasets/helmets).

Starts from the official yolov5n.pt at 320 px: a new 2-class Detect head, fine-tuning with the BN-L1 penalty
(sparse stage), pruning to at most half the FLOPs, fine-tuning, export and report. The unpruned model trained
with the same total epochs and recipe (the pipeline's `dense` stage) is the yardstick.

Issue target (#6): the pruned + fine-tuned model ends within 2 points of mAP50 of the unpruned one, and the
pipeline (everything but the comparison run) takes at most 2 hours on this 2-core CPU. For scale, the official
YOLOv5 transfer training at 320 for 20 epochs reaches mAP50 0.756 / mAP50-95 0.399 in 18 minutes.

    python bench/helmets.py [--sparse-epochs 10 --finetune-epochs 80 --sparsity 0.02 --workdir DIR -- EXTRA...]

Recipe (defaults): a short sparse stage, YOLOv5's transfer training (lr0 0.01, warm-up) with targeted sparsity at
a constant 0.02 (the L1 penalty only on the channels the 50% FLOPs cut will remove, re-chosen every epoch); the cut
with the least-squares re-fit on 128 training images (`--reconstruct 128`); then a long fine-tune with the same
hyperparameters as the sparse stage (full LR and warm-up, not finetune/hyps/finetune.yaml). The split of a fixed
epoch budget is what matters: the pruned network needs epochs at full learning rate, the sparse stage does not.

Each run leaves its raw record in bench/results/helmets_runs/<name>.json (+ .md: command, stage times, checks,
bootstrap interval) and the helmets table (bench/results/helmets.json, a row per recipe and seed) is collected
again from them (bench/helmets_seeds.py). How the recipe was found, every variant tried with its figures (the
hand-run probes included), is bench/results/helmets_runs/hand_runs.md.
"""

from __future__ import annotations

import argparse
import subprocess
import time
from pathlib import Path

from benchlib.helmets_run import adopt_dense_stage, judge, markdown, pipeline_command, read_reference, run_figures
from benchlib.helmets_table import QUESTION, write_table
from common import REPO, need_shared, runs_dir, write_result


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sparse-epochs", type=int, default=10)
    ap.add_argument("--finetune-epochs", type=int, default=80)
    ap.add_argument("--sparsity", type=float, default=0.02)
    ap.add_argument("--sparsity-mode", default="targeted", choices=("uniform", "targeted"))
    ap.add_argument("--sparsity-schedule", default="constant", choices=("constant", "linear", "ramp"))
    ap.add_argument("--finetune-hyp", default="",
                    help="fine-tune stage hyperparameters (default '': the same as the sparse stage)")
    ap.add_argument("--reconstruct", type=int, default=128, help="re-fit the cut on N training images (0 = no)")
    ap.add_argument("--target-flops", type=float, default=0.5)
    ap.add_argument("--nbs", type=int, default=16, help="nominal batch: 16 = no accumulation, 4x the optimizer steps")
    ap.add_argument("--seed", type=int, default=0, help="training seed of every stage")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_helmets"))
    ap.add_argument("--dense-from", metavar="RUN",
                    help="a pipeline run folder (<workdir>/exp) whose finished unpruned stage, trained by the same "
                         "command in parallel, is reused instead of training it again")
    ap.add_argument("--reference", metavar="RESULT",
                    help="an earlier helmets result JSON of the same seed and total epochs: its unpruned model is the "
                         "yardstick and none is trained here (for trying pruning recipes against a fixed yardstick; "
                         "no bootstrap, since that needs the unpruned weights)")
    ap.add_argument("--out", help="the run's record name in bench/results/helmets_runs (default helmets_seed<N>)")
    ap.add_argument("extra", nargs="*", help="more `prune.py pipeline` flags (after --)")
    args = ap.parse_args(argv)
    if args.reference and args.dense_from:
        ap.error("--reference and --dense-from both give the unpruned model: pick one")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    shared = need_shared()
    total = args.sparse_epochs + args.finetune_epochs
    reference = read_reference(Path(args.reference), args.seed, total) if args.reference else None
    cmd = pipeline_command(args, shared, dense_epochs=0 if reference else total)
    run = Path(args.workdir) / "exp"
    if args.dense_from:
        adopt_dense_stage(Path(args.dense_from), run, total)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    figures, models = run_figures(run, cmd, time.perf_counter() - t0, reference)
    spread = judge(figures, models, args.target_flops, reference, shared / "datasets" / "helmets" / "helmets.yaml")
    md = markdown(args, figures, models, reference, spread)
    write_result(args.out or f"helmets_seed{args.seed}", figures, md, out_dir=runs_dir(QUESTION))
    print(md)
    table, _ = write_table()
    print(f"helmets table collected again: {table}")


if __name__ == "__main__":
    main()
