"""Which channels to cut from a checkpoint that was never sparse-trained: |gamma| (slim) or the loss (taylor)?

The official yolov5n.pt pruned at ratios 0.05 / 0.1 / 0.2 (fraction of channels removed, one global ranking),
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

from prune import PruneConfig
from prune.cli import calib_loader
from prune.sweep import sweep
from yolo.checkpoint import load_model

RATIOS = (0.05, 0.1, 0.2)
CALIB_IMAGES = 64
VARIANTS = (("slim", 0), ("taylor", 0), ("slim", CALIB_IMAGES), ("taylor", CALIB_IMAGES))


def main() -> None:
    argparse.ArgumentParser(description=__doc__.splitlines()[0]).parse_args()
    need_shared()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # OMP_NUM_THREADS=1 beside another job
    model, _ = load_model(SHARED / "weights" / "yolov5n.pt")
    data = SHARED / "datasets" / "coco128" / "coco128.yaml"
    calib = calib_loader(data, 640, CALIB_IMAGES, batch_size=8)
    rows, base = [], {}
    for importance, reconstruct in VARIANTS:
        t0 = time.perf_counter()
        config = PruneConfig(ratio=0.0, imgsz=640, importance=importance, reconstruct=reconstruct)
        res = sweep(model, ratios=RATIOS, data=data, config=config, batch_size=16, calib_loader=calib)
        base = res.baseline
        rows += [{"importance": importance, "reconstruct": reconstruct, "ratio": r.ratio, "flops_kept": r.flops_kept,
                  "params_kept": r.params_kept, "map": r.map, "map50": r.map50,
                  "max_removed_gamma": r.max_removed_gamma} for r in res.rows]  # fmt: skip
        print(f"{importance} reconstruct {reconstruct}: {time.perf_counter() - t0:.0f} s", flush=True)
    figures = {"unpruned": {"map": base.get("map"), "map50": base.get("map50")}, "rows": rows}
    md = (
        "### Importance on a checkpoint that was not sparse-trained: yolov5n.pt, coco128 val at 640, no fine-tuning\n\n"
        f"Unpruned: mAP50-95 {base['map']:.3f}, mAP50 {base['map50']:.3f}. taylor: the detection loss's first-order "
        f"change on {CALIB_IMAGES} train images; re-fit on the same images.\n\n"
        + markdown_table(
            ["importance", "re-fit", "ratio removed", "FLOPs kept", "largest removed \\|gamma\\|", "mAP50-95", "mAP50"],
            [[r["importance"], "yes" if r["reconstruct"] else "no", f"{r['ratio']:.2f}", f"{r['flops_kept']:.3f}",
              "" if r["max_removed_gamma"] is None else f"{r['max_removed_gamma']:.2f}", f"{r['map']:.3f}",
              f"{r['map50']:.3f}"] for r in rows],
        )
    )
    write_result("prune_importance", figures, md)
    print(md)


if __name__ == "__main__":
    main()
