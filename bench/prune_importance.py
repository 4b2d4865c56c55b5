"""Which channels to cut from a checkpoint that was never sparse-trained: |gamma| (slim) or the loss (taylor)?

The official yolov5n.pt pruned to keep 93% / 86% / 73% of its FLOPs (one global ranking, the threshold found by
bisection: the importances remove different channels, so only a FLOPs target compares them at the same cost),
scored on coco128 val at 640 with no fine-tuning, for each importance with beta compensation alone and with the
least-squares re-fit (`--reconstruct`). Taylor scores come from the detection loss's gradient on 64 coco128 train
images at 640 (the same images the re-fit reads). Needs ../shared.

    python bench/prune_importance.py
"""

from __future__ import annotations

import argparse
import time

import torch
from common import SHARED, markdown_table, need_shared, write_result

from prune import PruneConfig, build_graph, plan_pruning
from prune.apply import apply_plan
from prune.calib import calib_loader
from prune.importance import group_scores
from yolo.checkpoint import load_model
from yolo.val import evaluate

TARGETS = (0.93, 0.86, 0.73)  # fraction of the FLOPs kept
CALIB_IMAGES = 64
VARIANTS = (("slim", 0), ("taylor", 0), ("slim", CALIB_IMAGES), ("taylor", CALIB_IMAGES))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    need_shared()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # OMP_NUM_THREADS=1 beside another job
    model, _ = load_model(SHARED / "weights" / "yolov5n.pt")
    data = SHARED / "datasets" / "coco128" / "coco128.yaml"
    calib = calib_loader(data, 640, CALIB_IMAGES, batch_size=8)
    graph = build_graph(model, 640)
    base = evaluate(model, data, imgsz=640, batch_size=16, progress=False)
    scores = {imp: group_scores(graph, imp, calib) for imp in ("slim", "taylor")}
    rows = []
    for importance, reconstruct in VARIANTS:
        t0 = time.perf_counter()
        for keep in TARGETS:
            plan = plan_pruning(graph, PruneConfig(target_flops=keep, imgsz=640, importance=importance,
                                                   reconstruct=reconstruct), scores=scores[importance])  # fmt: skip
            pruned = apply_plan(model, plan, calib_loader=calib if reconstruct else None)
            m = evaluate(pruned, data, imgsz=640, batch_size=16, progress=False)
            t = plan.table
            rows.append({"importance": importance, "reconstruct": reconstruct, "target_flops": keep,
                         "flops_kept": t.flops_kept, "params_kept": t.params_kept, "map": m["map"],
                         "map50": m["map50"], "max_removed_gamma": t.max_removed_gamma})  # fmt: skip
            print(rows[-1], flush=True)
        print(f"{importance} reconstruct {reconstruct}: {time.perf_counter() - t0:.0f} s", flush=True)
    figures = {"unpruned": {"map": base.get("map"), "map50": base.get("map50")}, "rows": rows}
    md = (
        "### Importance on a checkpoint that was not sparse-trained: yolov5n.pt, coco128 val at 640, no fine-tuning\n\n"
        f"Unpruned: mAP50-95 {base['map']:.3f}, mAP50 {base['map50']:.3f}. taylor: the detection loss's first-order "
        f"change on {CALIB_IMAGES} train images; re-fit on the same images.\n\n"
        + markdown_table(
            ["importance", "re-fit", "FLOPs kept", "params kept", "largest removed \\|gamma\\|", "mAP50-95", "mAP50"],
            [[r["importance"], "yes" if r["reconstruct"] else "no", f"{r['flops_kept']:.3f}", f"{r['params_kept']:.3f}",
              f"{r['max_removed_gamma']:.2f}", f"{r['map']:.3f}",
              f"{r['map50']:.3f}"] for r in rows],
        )
    )
    write_result("prune_importance", figures, md)
    print(md)


if __name__ == "__main__":
    main()
