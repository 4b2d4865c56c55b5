"""Training throughput of the engine, and which loader setting trains fastest on this CPU.

yolov5n.pt fine-tuned (`finetune.py`, YOLOv5 augmentation, mosaic on, no scoring) on helmets at 320 (39 batches of
16 an epoch) and coco128 at 640 (8 batches), with 0, 1 and 2 loader workers. `finetune.py` gives the training step
the cores the workers leave (at least one thread), and with no workers the default `--cache auto` keeps the decoded
images in memory. Three epochs run: the first includes kernel warm-up and the last is scored (as with YOLOv5's
--noval), so the fastest epoch between them counts (with three, the second).

    python bench/train_throughput.py [--workers 0 1 2 --cases helmets:320 coco128:640 --epochs 3]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from common import REPO, markdown_table, need_shared, write_result

from finetune.runs import read_results
from yolo.data import load_data_yaml

DATA = {"helmets": "datasets/helmets/helmets.yaml", "coco128": "datasets/coco128/coco128.yaml"}


def epoch_seconds(shared: Path, data_yaml: Path, imgsz: int, workers: int, epochs: int, batch: int) -> list[float]:
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, str(REPO / "finetune.py"), "--weights", str(shared / "weights" / "yolov5n.pt"),
               "--data", str(data_yaml), "--imgsz", str(imgsz), "--batch-size", str(batch), "--epochs", str(epochs),
               "--noval", "--workers", str(workers), "--device", "cpu", "--project", tmp, "--name", "tp",
               "--quiet"]  # fmt: skip
        subprocess.run(cmd, cwd=REPO, check=True, capture_output=True, text=True)
        return [float(r["time"]) for r in read_results(Path(tmp) / "tp" / "results.csv")]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--cases", nargs="+", default=["helmets:320", "coco128:640"], metavar="DATA:IMGSZ")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--batch-size", type=int, default=16)
    args = ap.parse_args()
    shared = need_shared()
    rows = []
    for case in args.cases:
        name, _, size = case.partition(":")
        if name not in DATA or not size.isdigit():
            sys.exit(f"--cases {case!r}: expected one of {', '.join(DATA)} and an image size, e.g. helmets:320")
        n_images = len(load_data_yaml(shared / DATA[name]).train)
        for workers in args.workers:
            secs = epoch_seconds(shared, shared / DATA[name], int(size), workers, args.epochs, args.batch_size)
            best = min(secs[1:-1] or secs)  # not the warm-up, not the scored last epoch
            rows.append({"data": name, "imgsz": int(size), "workers": workers, "epoch_seconds": secs,
                         "seconds": best, "images_per_second": n_images / best})  # fmt: skip
            print(rows[-1], flush=True)
    md = (
        f"### Training throughput: yolov5n, batch {args.batch_size}, CPU, by loader workers\n\n"
        + markdown_table(["data", "image size", "workers", "epoch", "images/s"],
                         [[r["data"], r["imgsz"], r["workers"], f"{r['seconds']:.1f} s",
                           f"{r['images_per_second']:.2f}"] for r in rows])  # fmt: skip
        + "\n\nFor scale, the official train.py took about 2.4 min per coco128 epoch at 640 including scoring on "
        "this machine (REFERENCE.md)."
    )
    write_result("train_throughput", {"batch": args.batch_size, "epochs": args.epochs, "rows": rows}, md)
    print(md)


if __name__ == "__main__":
    main()
