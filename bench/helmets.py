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
Same data, every run pruned to 0.50x FLOPs, mAP50 (best epoch); the yardstick, the unpruned model trained as many
epochs, scored 0.788 at 60 epochs (0.775 at 20) and 0.792 at 90 on the code of the time; re-trained on the code of
2026-11-24, the 90-epoch one scores 0.805 (below):

| sparse + fine-tune epochs | sparse stage | fine-tune hyp | sparse model | after the cut | fine-tuned |
|---|---|---|---|---|---|
| 10 + 10 | uniform 1e-2 | default | - | 0.000 | 0.555 |
| 30 + 30 (no re-fit) | targeted 0.02 | default (warm-up) | 0.697 | 0.560 | 0.709 |
| 30 + 30 | targeted, ramp to 0.05 | finetune.yaml (lr0 0.005) | 0.657 | 0.454 | 0.723 |
| 30 + 30, re-fit | targeted 0.02 | finetune.yaml | 0.697 | 0.653 | 0.722 |
| 20 + 40, re-fit, teacher | targeted, ramp to 0.02 | finetune.yaml | 0.741 | 0.195 | 0.693 |
| 20 + 40, re-fit | targeted 0.02 | default | 0.672 | 0.578 | 0.741 |
| 10 + 50, re-fit | targeted 0.02 | default | 0.644 | 0.210 | 0.748 |
| **10 + 80, re-fit** (vs 90 epochs unpruned: 0.792) | targeted 0.02 | default | 0.644 | 0.210 | **0.760** |
| 10 + 80, re-fit, `--min-keep 0.5` | targeted 0.02 | default | 0.626 | 0.421 | 0.754 |
| 10 + 80, re-fit | targeted 0.02 | lr0 0.01, no warm-up | 0.670 | 0.215 | 0.706 |
| 10 + 80, re-fit (rerun after the BN-statistics fix) | targeted 0.02 | default | 0.670 | 0.214 | 0.768 |
| 10 + 80, re-fit (that run's cut) | targeted 0.02 | default, warmup_bias_lr 0 | 0.670 | 0.214 | 0.745 |
| 10 + 80, re-fit (that run's cut) | targeted 0.02 | default, lr0 0.02 | 0.670 | 0.214 | 0.755 |
| 3 + 87, re-fit | targeted 0.02 | default | 0.251 | 0.021 | 0.744 |
| 10 + 80, re-fit (stopped at fine-tune epoch 28) | targeted 0.1 | default | 0.422 | 0.392 | (0.620 by then) |
| 0 + 90, re-fit (stopped at fine-tune epoch 4) | none: COCO gammas | default | - | - | (0.017 by then) |
| 10 + 140, re-fit (the control's cut; no 150-epoch yardstick yet) | targeted 0.02 | default | 0.670 | 0.214 | 0.769 |
| 10 + 40 + 40, re-fit, `--rounds 2` (0.71x, 0.50x FLOPs) | targeted 0.02 | default | 0.670 | 0.528, 0.334 | 0.734 |
| 10 + 80, re-fit, teacher: the 90-epoch unpruned model (0.805) | targeted 0.02 | default | 0.670 | 0.214 | 0.747 |
| 10 + 80, re-fit, `--target-flops 0.7` (0.70x FLOPs, 1.32 M params) | targeted 0.02 | default | 0.677 | 0.473 | 0.767 |
| **10 + 80, re-fit keeping filter lengths** (unpruned: 0.805) | targeted 0.02 | default | 0.670 | 0.215 | **0.786** |

The floor row: the global |gamma| ranking cuts the high-resolution neck hardest (model.13/14/20 64 -> 8 channels,
model.17's bottleneck 32 -> 8) and leaves the 10x10 layers almost whole; `--min-keep 0.5` (no layer loses more
than half) keeps the neck at half width and takes the FLOPs from the deep layers instead (params 0.78 M instead
of 0.90 M). The cut then costs far less (0.421 against 0.210) but the fine-tuned model ends the same: mAP50
0.754 against 0.760, mAP50-95 0.425 against 0.414 (both the report's scores of best.pt). A second run of
the 90-epoch unpruned model on another day
(same command and seed, stopped at epoch 70) had already reached mAP50 0.808, against 0.792 for the committed
one: the yardstick itself moves by 1-2 points between runs, as large as the margin the issue asks for.
The no-warm-up row tested whether the warm-up's restart (bias LR 0.1, momentum 0.8) is what wipes out the cut
model: it is not. At lr0 0.01 without warm-up the first fine-tune epoch still took mAP50 from 0.215 to 0.000, the
climb back was slower (0.61 at epoch 52 of 80) and it ended 5 points below the run with the warm-up, so YOLOv5's
warm-up stays. A third unpruned 90-epoch run (same command, stopped at epoch 50 to free the core) had reached
0.782 by epoch 46.
The committed recipe run again on 2026-11-23 (after the re-fit started giving re-fitted BatchNorms their own
statistics; hand-run, same command with `--dense-epochs 0`) ended at 0.768 / 0.406 (best epoch 63; 0.757 at the
last): 2.4 points under the committed yardstick, inside the yardstick's own spread (0.782-0.808) but not within 2
of it. Its fine-tune epochs 0-5 went 0.156, 0.194, 0.101, 0.124, 0.351, 0.386 (no fall to 0 this time), 0.62 at
epoch 18 and 0.70 at 40, while the unpruned model is at ~0.74 by epoch 18: the pruned network trails all the way
and closes most of the gap only as the LR anneals. Its cut is lopsided: the targeted penalty brought the cut set
only to |gamma| ~0.35-0.40 in 10 epochs (global threshold 0.55), and the FLOPs target is met mostly in the 40x40
and 20x20 paths (model.5 128 -> 40, model.4.cv3 64 -> 16, model.13/14/20 -> 8) while the 10x10 layers stay whole.
Pipeline 96 min with two other jobs on the cores (fine-tune epochs ~61 s), before the loader's memory cache.
That run (the control below) was then the committed table, beside the unpruned model trained on the same code:
the 90-epoch unpruned run of the same command and seed, stopped at epoch 70 by a session's end and resumed
(training is deterministic here: two runs of it agreed to the last digit for 51 epochs), scores 0.805 / 0.461, not
the 0.792 of the earlier yardstick, so the gap is 3.7 points. Its summed epoch times are 166 min (shared cores);
the pipeline's own record of the stage has only the resumed attempt, since a kill (SIGKILL) leaves no time to write
one.
Two fine-tune variants from that same cut (hand-run, 2026-11-24, two runs sharing the cores) did not help, their
mAP50 trailing the control's from epoch ~50 on: the warm-up without its bias-LR kick (`warmup_bias_lr: 0`, to spare
the inherited head) 0.745 / 0.411, and a doubled LR (`lr0: 0.02`) 0.755 / 0.407, against 0.768 / 0.406.
Three more splits of the same 90 epochs (hand-run 2026-11-24, two at a time): moving the cut earlier stopped
paying. 3 + 87 trailed the control by ~1 point all the way (5-epoch means 0.659 vs 0.665 at total epoch 49) and
ended 0.744 / 0.400. Pruning yolov5n.pt's COCO gammas with no sparse stage (0 + 90, the new head trained in the
fine-tune; `--sparse-epochs 0` from a checkpoint of other classes needed a pipeline fix first) left a network that
scored 0.000-0.017 over its first 5 epochs, where fresh transfer of the unpruned model reaches 0.57: stopped. A 5x
targeted rate (0.1) does make the cut free (32% of the gammas under 1e-3 by epoch 6; 0.422 -> 0.392 at the cut, and
the warm-up no longer knocks the model down), but the sparse stage learns much less (0.422 at epoch 9 against
0.670) and the fine-tune trailed the control by ~4 points (0.577 vs 0.617 at total epoch 34): stopped.
A longer fine-tune from the control's cut (10 + 140, 2026-11-24, pipeline 119 min, half of it beside another
run) gained mAP50-95 (0.431 against 0.406) but not mAP50 (0.769 against 0.768), still 3.6 points under the
90-epoch unpruned model, so more epochs alone do not close the gap; its 150-epoch yardstick was not finished
(39 epochs in /tmp/hd150, resumable).
Two more from the control's sparse stage (hand-run 2026-11-24, two at a time): iterative pruning (`--rounds 2`:
0.71x FLOPs, 40 epochs, then 0.50x, 40 epochs; the first cut cost 0.670 -> 0.528, the round-1 model reached 0.735,
the second cut took it to 0.334) ended at 0.734 / 0.401. Knowledge distillation from the best teacher there is, the
90-epoch unpruned model itself (0.805; `--teacher PATH`, default gains, a teacher forward per batch, fine-tune 87
min beside another run), led the control by 2-4 points at total epochs 29-44 (5-epoch means; 0.660 vs 0.634 at 39)
and fell behind as the LR annealed: 0.747 / 0.413. Neither a gentler path to the cut nor the unpruned model's own
outputs close the gap, and the pruned network underfits its training set: after 80 fine-tune epochs its train box
loss is 0.037 (0.035 after 140) against 0.027 for the unpruned model at 90, and its class loss 0.0054 against 0.0026
(the unpruned model was at those values by epochs 30-40). But a milder cut does not help either: the same recipe at
0.7x FLOPs (`--target-flops 0.7`, its own sparse stage; 1.32 M params, train box loss 0.038 at total epoch 50
against 0.043 at 0.5x) ends at the same mAP50, 0.767 / 0.419 (pipeline 73 min, mostly alone). So the gap is not the
size of the 0.5x network. What every pruned run shares is the restart: a cut at epoch 10, then a fresh 80-epoch
schedule whose warm-up knocks the model down and re-trains it from what is left of the COCO features. The next
measurement: a cut that removes nothing (`--ratio 0`) followed by the same fine-tune, which prices the restart
alone.
The committed result (2026-11-24, `bench/helmets.py` on the code of 75440d2; run folder seeded with the control's
finished baseline and sparse stages, same key, so only the cut onwards ran again): the least-squares re-fit had
made the filters it fitted longer, up to 4.3x the per-filter RMS in the thinned neck (model.21 0.012 -> 0.051,
model.13.m.0.cv2 3.3x, model.18/20 ~2x). After a BatchNorm a filter's length does not change the function, but
SGD turns a filter k times longer ~k^2 times more slowly, and weight decay (lr x wd ~5e-6 per step) would take
~10^5 steps to undo it: the neck that the cut thins most was fine-tuned at a fraction of the LR. The re-fit now
scales each such filter back to its pre-fit length, the BatchNorm's running statistics and gamma absorbing the
scale (eval outputs equal to fp16 rounding: mAP50 0.215 either way). Same cut, same 80-epoch fine-tune: the first
epochs fell as far (0.125, 0.005, 0.017), then the run led the control in 12 of the 13 five-epoch means from
fine-tune epoch 15 on (by 0.4-4.1 points, ~2 on average; -0.5 in one, +0.6 in the last) and ended at 0.786 / 0.421
(best.pt; best in-training epoch 0.786 against the control's 0.777) against 0.768 / 0.406: 1.8 points under the
unpruned model, inside the issue's 2 (pipeline 79 min counting the reused sparse stage, fine-tune epochs ~48 s
beside another run). A narrow pass from one run and one seed: the paired bootstrap's 95% interval for the gap is
-2.5 to 5.6 points.
What is left of the gap is the cut, not the restart. A cut of nothing (`prune --ratio 0 --reconstruct 128` on the
control's sparse model, then the same 80-epoch fine-tune, hand-run 2026-11-24) prices the restart alone: the
warm-up knocked the annealed model from 0.656 to 0.351 by fine-tune epoch 2 and it trailed the unpruned run by
5-8 points (5-epoch means) until fine-tune epoch 20 and 1-4 until 55, but it caught up by the end (+0.5 to +2.4 in
the last four means; best epoch 0.818, best.pt 0.793 / 0.451 by the trainer's scoring). The 0.5x run with the
fixed re-fit trailed that uncut run by 2-6 points all the way, 2.9 in the last five epochs.
A second seed (2026-11-24, code of 6429c61: `bench/helmets.py --seed 1`, the pipeline and the unpruned run each
pinned to one core with `--workers 0`, result in helmets_seed1.json) does not repeat the pass: the sparse stage
ended lower (0.587 against 0.670), the cut at the same 0.212, and the fine-tune at 0.751 / 0.421 (best epoch 70,
0.753 at the last) against 0.802 / 0.452 for the unpruned model: a 5.1-point gap, bootstrap 95% interval 1.1 to
8.9. The unpruned model is stable across the two seeds (0.805, 0.802), the pruned one is not (0.786, 0.751); the
mAP50-95 gaps (4.0, 3.1) agree better than the mAP50 ones. Its pipeline took 37 min (fine-tune epochs 22-29 s on
one core without loader workers, against ~48 s for seed 0's with 2 workers beside another run).
A third seed the same way (`--seed 2`, helmets_seed2.json): sparse stage 0.616, cut 0.161, fine-tuned 0.763 / 0.420
(best epoch 73; 0.749 at the last) against 0.788 / 0.439 unpruned: 2.5 points (bootstrap 95% -1.9 to 7.0). Over
the three seeds the gaps are 1.8, 5.1 and 2.5 (mean 3.1), the pruned model 0.751-0.786, the unpruned 0.788-0.805:
the issue's 2 points are met by one seed of three, so the recipe does not meet it reliably.
Seed 0 ran on an AVX2 host with 2 loader workers (the default of its time), seeds 1 and 2 on an AVX-512 host (see
each result's machine) without workers. Training on a CPU with at most 2 cores now defaults to no workers, which
draws the augmentation from another random stream: repeating seed 0 needs `-- --workers 2` and the same kind of CPU
(other kernels round differently: the demo's seed trained other weights on the two hosts).
Four variants on seed 1, the worst seed (2026-11-24, hand-run two at a time, each pinned to a core, `--workers 0`;
unpruned model 0.802 / 0.452, the recipe 0.751 / 0.421): a per-layer floor `--min-keep 0.5` (every layer keeps
about half its channels, 0.78 M params; the cut costs less, 0.590 -> 0.380) 0.765 / 0.434; `--min-keep 0.25`
(0.89 M) 0.764 / 0.426; one LR schedule over the sparse stage and the fine-tune (what `--lr-schedule continuous`
does; run with hyp files giving the same LRs) 0.767 / 0.416; both together 0.760 / 0.425. The continuous schedule
keeps the sparse stage at full LR, so the targeted penalty brings the cut set to |gamma| 0.15 instead of 0.41 and
the cut is almost free (0.253 -> 0.211, the sparse model itself scoring low at full LR), yet the fine-tuned model
ends where the others do: a cheaper cut does not close the gap. All four beat the recipe on this seed by 1-1.6
points and none comes within 2 of the unpruned model (gaps 3.5-4.2). Results: helmets_minkeep50_seed1.json,
helmets_minkeep25_seed1.json (`--reference helmets_seed1.json`: the unpruned figures of that run, not trained
again); the table over seeds and recipes is bench/helmets_seeds.py's.
The floor on the other two seeds (same day, same way) does not repeat the seed-1 gain: seed 2 0.745 / 0.420
against 0.788 / 0.439 (the recipe: 0.763), seed 0 0.774 / 0.429 against the AVX2 host's 0.805 / 0.461 (the recipe
there: 0.786). Mean mAP50 gap 3.7 points against the recipe's 3.1 (mAP50-95 2.3 against 3.0), worst 4.3: the
recipe stays as it is.
Easier images for the fine-tune (2026-11-24, same way, fine-tune stage only, from each seed's own sparse stage and
cut): the pruned network underfits its training set, so its last epochs were given images closer to the val ones.
Mosaic off for the last 10 fine-tune epochs (`--close-mosaic 10`, new pipeline flag) alone left seed 1 where it was
(0.751 / 0.417; its best epoch came before the switch). With it, half the scale augmentation (`--finetune-hyp
bench/hyps/ft_scale25.yaml`: default.yaml with `scale: 0.25`) led the recipe by 2-6 points over fine-tune epochs
25-45 on seed 1 and, on seeds 1 and 2, gained 1-1.5 points in the mosaic-free last epochs: 0.772 / 0.438 on seed 1
(gap 3.0), 0.777 / 0.433 on seed 2 (gap 1.1). Seed 0 (this AVX-512 host, its own sparse stage: 0.634 before the
cut, 0.199 after) ended at 0.742 / 0.401, 6.3 under the AVX2 host's yardstick. Mean gap 3.4, worst 6.3, against
the recipe's 3.1 / 5.1: within the seed spread, not a reliable gain, so the recipe stays. The unpruned model
trained 90 epochs with the same two settings (`finetune.py ... --hyp ft_scale25.yaml --close-mosaic 10`, hand-run,
best.pt scored with `prune.py val`) scores 0.777 / 0.428 on seed 1 (0.802 / 0.452 with the defaults) and 0.786 /
0.439 on seed 2 (0.788 / 0.439): the same recipe for both models would leave gaps of 0.5 and 0.9 points, but the
yardstick is the better unpruned model, the one trained with the defaults.
Seed 0 on the AVX-512 host (2026-11-24, second session: `--seed 0 -- --workers 0`, its unpruned model trained in a
second folder on the other core and adopted with `--dense-from`; helmets_seed0_avx512.json): the sparse stage ended
at 0.634, the cut at 0.199, the fine-tune at 0.755 / 0.413 against 0.794 / 0.464 unpruned: 3.9 points (bootstrap
95% -0.0 to 7.6). The 1.8 of the AVX2 host's seed 0 does not repeat here. The seed-0 rows of `--min-keep 0.5` and
of the easier-images variant, run on this host, were re-scored against this unpruned model (`--reference`, nothing
trained again): gaps 2.0 and 5.2.
The re-fit of the Detect convs (hand-run, same day): it rewrites their parameters, not only their inputs' weights.
On seed 0's cut the objectness biases went from -6.7 / -5.4 / -4.1 (YOLOv5's prior, kept through the sparse stage)
to -0.2 / -0.8 / -1.6, the filters growing 1.3-1.8x (median; up to 4.7x) to carry the offset instead. A cut whose
re-fit leaves the Detect convs as they were (same plan; mAP50 at the cut 0.206 against 0.199 on seed 0, 0.200
against 0.210 on seed 1, 0.239 against 0.161 on seed 2) and the same 80-epoch fine-tune ended at 0.767 / 0.421 on
seed 0 (recipe 0.755 / 0.413), 0.754 / 0.414 on seed 1 (0.751 / 0.421) and 0.765 / 0.408 on seed 2 (0.763 / 0.420):
mAP50 +1.2, +0.3, +0.2, mAP50-95 -0.3 on average, inside the seed spread, so the Detect re-fit stays.
The two seed-1 gains together (`--min-keep 0.5` with `--close-mosaic 10 --finetune-hyp ft_scale25.yaml`, from the
floor run's cut; helmets_mk50cm10sc25_seed1.json) do not stack: 0.756 / 0.427 against 0.765 and 0.772 for each
alone and 0.751 for the recipe (unpruned 0.802).
Where the gap is (COCO's size split of mAP50-95 on the val split, best.pt of each run on the AVX-512 host, seeds
0/1/2; helmets has no large objects): the pruned model loses on small objects on every seed, 0.360 / 0.372 / 0.358
against 0.415 / 0.401 / 0.394 unpruned (2.9-5.5 points), and on medium ones on two (0.518 / 0.519 / 0.555 against
0.579 / 0.551 / 0.536). `--min-keep 0.5`, which keeps the stride-8 neck at half width, wins small objects back
(0.397 / 0.378 / 0.380) and pays on medium ones on two seeds (0.503 / 0.542 / 0.501): at half the FLOPs the cut
trades one scale against the other. (bench/helmets_sizes.py, helmets_sizes.json.)
One LR schedule over both stages, with the pipeline's flag this time (`--lr-schedule continuous`, 2026-11-25,
seeds 0 and 2 on the AVX-512 host, each pinned to a core; helmets_continuous.json, helmets_continuous_seed2.json):
the sparse stage at full LR ends low (mAP50 0.180 / 0.234), the cut costs little (0.148 / 0.150), the fine-tune
leads the recipe's by 2-23 points over its first 20 epochs (it starts at a lower LR) and then trails it by up to 5
points: 0.742 / 0.402 (gap 5.2) and 0.731 / 0.394 (gap 5.7), against the recipe's 0.755 and 0.763 on the same
seeds. The seed-1 gain of the hand-run (0.767 against 0.751) does not repeat: the restart stays.
What the target costs (2026-11-25, same recipe with `--target-flops 0.7`, each seed its own sparse stage, one
core each; helmets_flops70.json, helmets_flops70_seed1.json, helmets_flops70_seed2.json): 1.32 M params, 0.70x
FLOPs; the cut costs less (0.659 -> 0.478, 0.624 -> 0.431, 0.694 -> 0.540 against ~0.2 at 0.5x), the fine-tune
led the 0.5x runs by 3-7 points from its first epochs on and ended at 0.789 / 0.436 (seed 0), 0.771 / 0.417 (seed
1) and 0.782 / 0.447 (seed 2) against 0.794 / 0.464, 0.802 / 0.452 and 0.788 / 0.439 unpruned: gaps 0.5, 3.1 and
0.6 (mean 1.4), against 3.9, 5.1 and 2.5 at 0.5x on the same host (mean 3.8). About 2.4 of the 0.5x gap is the size
of the network; the pre-fix 0.7x run of 2026-11-23 (0.767, level with its 0.5x control) had said otherwise.
Uniform sparsity at 5e-2 collapsed the model (mAP 0) by epoch 8. With the gentle fine-tune hyp every split plateaued
near 0.72 whatever the cut cost (`--min-keep 0.5`, so the P3 neck keeps at least half its channels: 0.725), which
looked like the pruned network's ceiling; it was the learning rate. YOLOv5's warm-up (bias LR 0.1, momentum 0.8)
knocks the freshly cut model to ~0.05 in the first fine-tune epochs whatever it started from, so what the cut
leaves hardly matters at full LR, and every epoch moved from the sparse stage to the fine-tune gained mAP50:
30 + 30 (0.709) < 20 + 40 (0.741) < 10 + 50 (0.748). More epochs narrow the gap: 4.0 points at 60 epochs, 3.2 at
90 (10 + 80: 0.760 against 0.792; pipeline 65 min), still short of the issue's 2.
Stage times above were measured with two runs sharing the two cores (one thread each): the 10 + 50 pipeline took
51 min, its fine-tune epochs ~41 s against ~60 s for the unpruned model's. The 10 + 80 result of that time reused
that run's sparse and prune stages (same inputs, same stage keys) and had its 90-epoch unpruned stage trained
in a second run folder beside the fine-tune, then merged into the run's pipeline.json before the report
(now `--dense-from RUN` does that merge, checked). The same machine type is not the same speed every day: the floor
run's pipeline took 114 min (sparse epochs ~110 s, fine-tune ~65 s, unpruned ~94 s, two runs sharing
the cores), close to the 2 h limit.
"""

from __future__ import annotations

import argparse
import json
import math
import shlex
import subprocess
import sys
import time
from pathlib import Path

from common import REPO, need_shared, write_result

from finetune.runs import read_results
from pipeline.state import STATE_FILE, PipelineState


def main() -> None:
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
    ap.add_argument("--seed", type=int, default=0,
                    help="training seed of every stage; a seed other than 0 writes helmets_seed<N>.json beside the "
                         "committed helmets.json")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_helmets"))
    ap.add_argument("--dense-from", metavar="RUN",
                    help="a pipeline run folder (<workdir>/exp) whose finished unpruned stage, trained by the same "
                         "command in parallel, is reused instead of training it again")
    ap.add_argument("--reference", metavar="RESULT",
                    help="an earlier helmets result JSON of the same seed and total epochs: its unpruned model is the "
                         "yardstick and none is trained here (for trying pruning recipes against a fixed yardstick; "
                         "no bootstrap, since that needs the unpruned weights)")
    ap.add_argument("--out", help="result name in bench/results (default helmets, helmets_seed<N>)")
    ap.add_argument("extra", nargs="*", help="more `prune.py pipeline` flags (after --)")
    args = ap.parse_args()
    shared = need_shared()
    total = args.sparse_epochs + args.finetune_epochs
    if args.reference and args.dense_from:
        ap.error("--reference and --dense-from both give the unpruned model: pick one")
    reference = read_reference(Path(args.reference), args.seed, total) if args.reference else None
    cmd = [sys.executable, str(REPO / "prune.py"), "pipeline",
           "--weights", str(shared / "weights" / "yolov5n.pt"),
           "--data", str(shared / "datasets" / "helmets" / "helmets.yaml"),
           "--imgsz", "320", "--batch-size", "16", "--nbs", str(args.nbs),
           "--sparse-epochs", str(args.sparse_epochs), "--sparsity", str(args.sparsity),
           "--sparsity-mode", args.sparsity_mode, "--sparsity-schedule", args.sparsity_schedule,
           *(["--finetune-hyp", args.finetune_hyp] if args.finetune_hyp else []),
           "--target-flops", str(args.target_flops), "--finetune-epochs", str(args.finetune_epochs),
           "--dense-epochs", str(0 if reference else total), "--latency-runs", "30", "--threads", "1",
           "--project", args.workdir, "--name", "exp", "--quiet", *(["--seed", str(args.seed)] if args.seed else []),
           *(["--reconstruct", str(args.reconstruct)] if args.reconstruct and "--reconstruct" not in args.extra
             else []), *args.extra]  # fmt: skip
    if args.dense_from:
        adopt_dense_stage(Path(args.dense_from), Path(args.workdir) / "exp", total)
    t0 = time.perf_counter()
    subprocess.run(cmd, cwd=REPO, check=True)
    wall = time.perf_counter() - t0
    run = Path(args.workdir) / "exp"
    report = json.loads((run / "report" / "report.json").read_text())
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    seconds = {k: v.get("seconds", 0.0) for k, v in stages.items()}
    models = {m["role"]: m for m in report["models"]}
    fin, dense = models["finetuned"], models.get("dense")
    if reference:
        dense = models["dense"] = reference["dense"]
    base = models["baseline"]
    pipeline_s = sum(s for k, s in seconds.items() if not k.startswith("dense"))
    train_s = {k: s for k, v in stages.items() if (s := epoch_seconds(v))}
    dense_s = max(seconds.get("dense", 0.0), train_s.get("dense", 0.0))
    figures = {
        "command": " ".join(shlex.quote(c) for c in cmd),
        "wall_seconds": round(wall, 1),
        "pipeline_seconds_without_dense": round(pipeline_s, 1),
        "stage_seconds": seconds,
        "stage_epoch_seconds": train_s,
        "models": {r: {"params": m["params"], "gflops": m["gflops"], "map50": m["metrics"]["map50"],
                       "map": m["metrics"]["map"]} for r, m in models.items()},
        "flops_ratio": fin["gflops"] / base["gflops"],
    }
    checks = {f"FLOPs <= {args.target_flops:g}x": figures["flops_ratio"] <= args.target_flops + 1e-9,
              "pipeline <= 2 h": pipeline_s <= 7200}
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
        boot = gap_bootstrap(dense["path"], fin["path"], shared / "datasets" / "helmets" / "helmets.yaml")
        figures["map50_gap_bootstrap"] = boot
        spread = (f" How much of the gap is the luck of the {boot['images']} val images (paired bootstrap, "
                  f"{boot['rounds']} draws, YOLOv5's AP): unpruned minus pruned {100 * boot['difference']:.1f} "
                  f"points, sd {100 * boot['sd']:.1f}, 95% interval {100 * boot['ci95'][0]:.1f} to "
                  f"{100 * boot['ci95'][1]:.1f}; each model's own mAP50 sd {100 * boot['sd_a']:.1f} (unpruned) "
                  f"and {100 * boot['sd_b']:.1f} (pruned).")
    figures["checks"] = checks
    rows = "\n".join(
        f"| {r} | {m['params'] / 1e6:.3f} M | {m['gflops']:.3f} | {m['metrics']['map50']:.3f} | "
        f"{m['metrics']['map']:.3f} |" for r, m in models.items()
    )
    md = (
        f"### Helmets (a user's own data): yolov5n.pt -> 2 classes at 320, sparse {args.sparse_epochs} + fine-tune "
        f"{args.finetune_epochs} epochs vs unpruned {total} epochs" + (f", seed {args.seed}" if args.seed else "")
        + (f", to {args.target_flops:g}x FLOPs" if args.target_flops != 0.5 else "")
        + (f", `{shlex.join(args.extra)}`" if args.extra else "")
        + "\n\n"
        f"Pipeline {pipeline_s / 60:.0f} min ("
        + (f"the unpruned model from {reference['file']}" if reference
           else f"the unpruned comparison run another {dense_s / 60:.0f} min") + ").\n\n"
        "| model | params | GFLOPs | mAP50 | mAP50-95 |\n|---|---|---|---|---|\n" + rows + "\n\n"
        + "Checks: " + ", ".join(f"{k}: {'yes' if v else '**no**'}" for k, v in checks.items()) + "." + spread
    )
    write_result(args.out or ("helmets" if args.seed == 0 else f"helmets_seed{args.seed}"), figures, md)
    print(md)


def read_reference(path: Path, seed: int, epochs: int) -> dict:
    """The unpruned model's figures from an earlier result of this script, checked to be the same comparison."""
    from common import cpu_isa, machine

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


if __name__ == "__main__":
    main()
