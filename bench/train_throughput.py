"""Training throughput of the engine: images/s for yolov5n at 640, batch 16, on this CPU (coco128 train).

Runs `finetune.py` for one epoch without scoring (8 iterations of 16 images, mosaic on) and reads the epoch time
from results.csv; the first epoch includes kernel warm-up, so two epochs run and the second one counts.

    python bench/train_throughput.py [--imgsz 640 --batch-size 16 --workers 2]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, need_shared, write_result

from finetune.runs import read_results


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    shared = need_shared()
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(REPO / "finetune.py"), "--weights", str(shared / "weights" / "yolov5n.pt"),
               "--data", str(shared / "datasets" / "coco128" / "coco128.yaml"), "--imgsz", str(args.imgsz),
               "--batch-size", str(args.batch_size), "--epochs", "2", "--noval", "--workers", str(args.workers),
               "--device", "cpu", "--project", tmp, "--name", "tp", "--quiet"]
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
        rows = read_results(Path(tmp) / "tp" / "results.csv")
    n_images = 128
    secs = [float(r["time"]) for r in rows]
    ips = n_images / secs[-1]
    figures = {"imgsz": args.imgsz, "batch": args.batch_size, "workers": args.workers, "epoch_seconds": secs,
               "images_per_second": ips}
    md = (
        "### Training throughput: yolov5n, coco128 train, CPU\n\n"
        "| image size | batch | workers | epoch (128 images) | images/s |\n|---|---|---|---|---|\n"
        f"| {args.imgsz} | {args.batch_size} | {args.workers} | {secs[-1]:.1f} s | {ips:.2f} |\n\n"
        "For scale, the official train.py took about 2.4 min per epoch including scoring on this machine "
        "(REFERENCE.md)."
    )
    write_result("train_throughput", figures, md)
    print(md)


if __name__ == "__main__":
    main()
