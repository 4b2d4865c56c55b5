"""Prune-only quality (no fine-tuning): does network slimming work, and where is the cliff without it?

1. slimming: a yolov5n trained from scratch on the synthetic demo data WITH the BN-L1 penalty (the demo recipe);
   the channels whose coupled |gamma| is below 1e-2 are removed (one global threshold), FLOPs and mAP50 before
   and after, no fine-tuning. Issue target: >= 40% of the FLOPs removed, mAP50 moved by <= 1 point.
2. official yolov5n.pt on coco128 val at 640 (needs ../shared): mAP50-95 vs FLOPs kept for ratios 0.05..0.5,
   with `beta` compensation (default), without (`none`), with BatchNorm re-calibration and with the least-squares
   re-fit of the convs downstream of the cut (`--reconstruct`; both on 64 coco128 train images at 640), beside
   Torch-Pruning's published recipe (REFERENCE.md: 0.000 at every ratio).

    python bench/prune_quality.py [--sparse-weights runs/demo/exp/sparse/weights/final.pt --demo-data DIR]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import REPO, SHARED, write_result

from prune import PruneConfig, build_graph, prune_model
from prune.calib import calib_loader
from prune.importance import group_scores
from prune.sweep import sweep
from yolo.checkpoint import load_model
from yolo.flops import count_gflops
from yolo.val import evaluate

RATIOS = (0.05, 0.1, 0.2, 0.3, 0.5)
CALIB_IMAGES = 64  # coco128 train images at 640 for BN re-calibration and the least-squares re-fit
VARIANTS = (("beta", {}), ("none", {}), ("beta", {"recalibrate": CALIB_IMAGES}),
            ("beta", {"reconstruct": CALIB_IMAGES}))  # fmt: skip


def sparse_demo_model(tmp: Path) -> tuple[Path, Path]:
    """Train the demo's sparse stage (skipping prune/fine-tune) when no sparse weights are given."""
    cmd = [sys.executable, str(REPO / "prune.py"), "demo", "--data-dir", str(tmp / "data"), "--project",
           str(tmp / "runs"), "--name", "exp", "--finetune-epochs", "0", "--latency-runs", "5", "--quiet"]
    subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
    return tmp / "runs" / "exp" / "sparse" / "weights" / "final.pt", tmp / "data" / "data.yaml"


def slimming(weights: Path, data: Path, imgsz: int = 128) -> dict:
    model, _ = load_model(weights)
    scores = np.concatenate(group_scores(build_graph(model, imgsz)))
    ratio = float((scores < 1e-2).mean())
    before = evaluate(model, data, imgsz=imgsz, batch_size=16, progress=False)
    pruned, table = prune_model(model, PruneConfig(ratio=ratio, imgsz=imgsz, round_to=1))
    after = evaluate(pruned, data, imgsz=imgsz, batch_size=16, progress=False)
    g0, g1 = count_gflops(model, imgsz), count_gflops(pruned, imgsz)
    return {"weights": str(weights), "threshold": 1e-2, "ratio_removed": ratio, "gflops_before": g0,
            "gflops_after": g1, "flops_removed": 1 - g1 / g0, "map50_before": before["map50"],
            "map50_after": after["map50"], "map_before": before["map"], "map_after": after["map"],
            "max_removed_gamma": float(scores[scores < 1e-2].max()) if ratio else None}


def official_sweep() -> list[dict]:
    model, _ = load_model(SHARED / "weights" / "yolov5n.pt")
    data = SHARED / "datasets" / "coco128" / "coco128.yaml"
    rows = []
    calib = calib_loader(data, 640, CALIB_IMAGES, batch_size=8)
    for comp, extra in VARIANTS:
        config = PruneConfig(ratio=0.0, imgsz=640, compensate=comp, **extra)
        res = sweep(model, ratios=RATIOS, data=data, config=config, batch_size=16,
                    calib_loader=calib if config.needs_images else None)
        label = comp + "".join(f" + {k} {v}" for k, v in extra.items())
        rows += [{"compensate": label, "ratio": r.ratio, "flops_kept": r.flops_kept, "params_kept": r.params_kept,
                  "map": r.map, "map50": r.map50, "max_removed_gamma": r.max_removed_gamma} for r in res.rows]
        base = res.baseline
    return [{"compensate": "-", "ratio": 0.0, "flops_kept": 1.0, "params_kept": 1.0, "map": base.get("map"),
             "map50": base.get("map50"), "max_removed_gamma": None}] + rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sparse-weights", default=None)
    ap.add_argument("--demo-data", default=None)
    args = ap.parse_args()
    torch.set_num_threads(min(2, torch.get_num_threads()))  # OMP_NUM_THREADS=1 beside another job
    with tempfile.TemporaryDirectory() as tmp:
        if args.sparse_weights:
            weights, data = Path(args.sparse_weights), Path(args.demo_data)
        else:
            weights, data = sparse_demo_model(Path(tmp))
        slim = slimming(weights, data)
    figures = {"slimming": slim}
    md = (
        "### Network slimming works: sparse-trained yolov5n (demo data, 128 px), channels with \\|gamma\\| < 1e-2 "
        "removed, no fine-tuning\n\n| channels removed | FLOPs removed | mAP50 before | mAP50 after | "
        "mAP50-95 before | after |\n|---|---|---|---|---|---|\n"
        f"| {slim['ratio_removed']:.1%} | {slim['flops_removed']:.1%} | {slim['map50_before']:.3f} | "
        f"{slim['map50_after']:.3f} | {slim['map_before']:.3f} | {slim['map_after']:.3f} |"
    )
    if (SHARED / "weights" / "yolov5n.pt").is_file():
        rows = official_sweep()
        figures["official_yolov5n"] = rows
        md += (
            "\n\n### Prune-only on the official yolov5n.pt (not sparse-trained), coco128 val at 640, no "
            "fine-tuning\n\nTorch-Pruning's published recipe scores 0.000 at every ratio here (REFERENCE.md).\n\n"
            "| compensation | ratio removed | FLOPs kept | params kept | largest removed \\|gamma\\| | mAP50-95 | "
            "mAP50 |\n|---|---|---|---|---|---|---|\n"
            + "\n".join(
                f"| {r['compensate']} | {r['ratio']:.2f} | {r['flops_kept']:.3f} | {r['params_kept']:.3f} | "
                f"{'' if r['max_removed_gamma'] is None else format(r['max_removed_gamma'], '.2f')} | "
                f"{r['map']:.3f} | {r['map50']:.3f} |"
                for r in rows
            )
        )
    write_result("prune_quality", figures, md)
    print(md)


if __name__ == "__main__":
    main()
