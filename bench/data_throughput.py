"""How long does the training loader take to make a batch, reading images from disk or from the memory cache?

One process (workers=0, one thread), YOLOv5 training augmentation (mosaic, affine, HSV, flips), batch 16: the mean
time per batch over --batches batches after one warm-up batch, for helmets at 320 and coco128 at 640. On a 2-core
CPU the loader's workers share the cores with the training step, so data time is training time. Needs ../shared.

    python bench/data_throughput.py [--batches 20]
"""

from __future__ import annotations

import argparse
import time

import torch
from common import markdown_table, need_shared, write_result

from yolo.data import create_dataloader, load_data_yaml
from yolo.hyp import load_hyp


def seconds_per_batch(data_yaml, imgsz: int, cache: str, batches: int) -> tuple[float, float]:
    """(seconds per batch, seconds to build the loader, including filling the cache)."""
    cfg = load_data_yaml(data_yaml)
    t0 = time.perf_counter()
    loader, _ = create_dataloader(cfg.train, imgsz, 16, names=cfg.names, augment=True, hyp=load_hyp(None),
                                  workers=0, shuffle=True, cache=cache)  # fmt: skip
    build = time.perf_counter() - t0
    it = iter(loader)
    next(it)
    t0 = time.perf_counter()
    for _ in range(batches):
        try:
            next(it)
        except StopIteration:
            it = iter(loader)
            next(it)
    return (time.perf_counter() - t0) / batches, build


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    torch.set_num_threads(1)
    shared = need_shared()
    cases = (("helmets", shared / "datasets" / "helmets" / "helmets.yaml", 320),
             ("coco128", shared / "datasets" / "coco128" / "coco128.yaml", 640))  # fmt: skip
    rows = []
    for name, yaml_path, imgsz in cases:
        for cache in ("no", "ram"):
            per_batch, build = seconds_per_batch(yaml_path, imgsz, cache, args.batches)
            rows.append({"data": name, "imgsz": imgsz, "cache": cache, "seconds_per_batch": per_batch,
                         "build_seconds": build})  # fmt: skip
            print(rows[-1], flush=True)
    md = (
        "### Data loading: training batches of 16 (YOLOv5 augmentation), one process, from disk vs the memory cache\n\n"
        + markdown_table(["data", "image size", "cache", "s / batch", "loader start (s)"],
                         [[r["data"], r["imgsz"], r["cache"], f"{r['seconds_per_batch']:.3f}",
                           f"{r['build_seconds']:.1f}"] for r in rows])  # fmt: skip
    )
    write_result("data_throughput", {"batches": args.batches, "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
