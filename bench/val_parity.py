"""Scoring parity with the official YOLOv5 protocol on coco128 val, and how long the whole command takes.

Reference (../shared/REFERENCE.md): official predictions scored by pycocotools give mAP50-95 0.348 / mAP50 0.534;
the official val.py takes 46 s at batch 16 on this kind of machine. Each batch size is timed as the whole
`prune.py val` command (process start to exit), as a user would see it. Rows run with the default
`--rect-batches exact` (each batch holds images of one shape, so every batch size scores as batch 1) and,
for comparison, with `--rect-batches yolov5` (the official consecutive groups, padded to a common shape).

    python bench/val_parity.py [--batch-sizes 1 16 32]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from common import REPO, need_shared, write_result

OFFICIAL = {"map": 0.348, "map50": 0.534, "seconds_batch16": 46.0}


def run_val(weights: Path, data: Path, batch: int, mode: str) -> tuple[dict, float]:
    code = (
        "import json,sys; from yolo.val import evaluate; from yolo.checkpoint import load_model;"
        f"m,_=load_model({str(weights)!r}); r=evaluate(m,{str(data)!r},batch_size={batch},progress=False,"
        f"rect_batches={mode!r});"
        "print(json.dumps({k:r[k] for k in ('map','map50','precision','recall','speed_ms','images','instances')}))"
    )
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1]), time.perf_counter() - t0


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 16, 32])
    args = ap.parse_args()
    shared = need_shared()
    weights, data = shared / "weights" / "yolov5n.pt", shared / "datasets" / "coco128" / "coco128.yaml"
    rows, figures = [], {"official": OFFICIAL, "runs": []}
    with tempfile.TemporaryDirectory():
        for mode, b in [("exact", b) for b in args.batch_sizes] + [("yolov5", b) for b in args.batch_sizes if b > 1]:
            res, secs = run_val(weights, data, b, mode)
            figures["runs"].append({"batch": b, "rect_batches": mode, "seconds": round(secs, 1), **res})
            rows.append(f"| {b} | {mode} | {res['map']:.4f} | {res['map50']:.4f} | {res['precision']:.3f} | "
                        f"{res['recall']:.3f} | {secs:.1f} s | {res['speed_ms']['inf']:.1f} ms |")
            print(rows[-1], flush=True)
    md = (
        "### Scoring parity: yolov5n.pt on coco128 val at 640 (pycocotools)\n\n"
        "| batch | rect batches | mAP50-95 | mAP50 | P | R | whole command | inference / image |\n"
        "|---|---|---|---|---|---|---|---|\n"
        + "\n".join(rows)
        + f"\n| official | yolov5, batch 1 | {OFFICIAL['map']} | {OFFICIAL['map50']} | 0.560 | 0.506 "
        "| 46 s (batch 16) | 220 ms |"
    )
    write_result("val_parity", figures, md)


if __name__ == "__main__":
    main()
