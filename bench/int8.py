"""Question: is static int8 worth it for yolov5n on this CPU, and which variant?

Exports the baseline fp32 ONNX (fixed 640x640), builds int8 variants (activation type, calibration method,
number of calibration images), times each interleaved with fp32 at 1 thread, scores fp32 and every variant
on coco128 val (square 640 letterbox, pycocotools), and writes bench/results/int8.json.

    python bench/int8.py                       # defaults: ../shared weights and coco128
    python bench/int8.py --variants u8-minmax-n32 s8-minmax-n32 --rounds 50
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from common import REPO, SHARED, write_result

from reports.export import check_parity, export_onnx
from reports.int8_select import select_int8
from reports.quantize import Int8Config
from yolo.checkpoint import load_model
from yolo.data import load_data_yaml

DEFAULT_VARIANTS = [
    "u8-minmax-n32",
    "s8-minmax-n32",
    "u8-entropy-n32",
    "u8-percentile-n32",
    "u8-minmax-n128",
    "u8-minmax-n32-fhead",
]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n.pt"))
    ap.add_argument("--data", default=str(SHARED / "datasets" / "coco128" / "coco128.yaml"))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--variants", nargs="+", default=DEFAULT_VARIANTS)
    ap.add_argument("--rounds", type=int, default=30, help="interleaved timing rounds (each runs every model once)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--map-tolerance", type=float, default=0.01)
    ap.add_argument("--no-eval", action="store_true", help="latency only")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_int8"))
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "int8.json"))
    args = ap.parse_args(argv)

    t0 = time.time()
    work = Path(args.workdir)
    model, meta = load_model(args.weights)
    fp32 = export_onnx(model, work / "yolov5n.onnx", args.imgsz, metadata=meta)
    parity = check_parity(model, fp32, [SHARED / "reference" / "bus.jpg"])
    print(parity.summary())
    data = load_data_yaml(args.data)
    configs = [Int8Config.from_tag(v) for v in args.variants]
    n_calib = max(c.images for c in configs)
    calib = list(data.train)[:n_calib]
    sel = select_int8(
        fp32,
        work,
        calib,
        configs,
        data_cfg=None if args.no_eval else data,
        map_tolerance=args.map_tolerance,
        threads=args.threads,
        rounds=args.rounds,
        eval_kwargs={"batch_size": 8, "imgsz": args.imgsz},
    )
    print(sel.reason)
    figures = {
        "question": "static int8 (ORT QDQ, per-channel) vs fp32 for yolov5n: latency at 1 thread and mAP50-95",
        "settings": {
            "weights": args.weights,
            "data": args.data,
            "imgsz": args.imgsz,
            "threads": args.threads,
            "rounds": args.rounds,
            "calibration": "first N images of the train split, letterboxed square like inference",
            "scoring": "yolo.val.evaluate with OnnxDetector: fixed square letterbox, conf 0.001, IoU 0.6",
            "map_tolerance": args.map_tolerance,
        },
        "parity_fp32": parity.to_dict(),
        "selection": sel.to_dict(),
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.out)
    write_result(out.stem, figures, markdown(figures), out_dir=out.parent)
    print(f"wrote {args.out}")
    return 0


def markdown(result: dict) -> str:
    """The README table: every int8 variant's latency ratio and mAP50-95 beside fp32."""
    sel = result["selection"]
    fp = sel["fp32"]
    lines = ["### int8 (ONNX Runtime static QDQ, per-channel) vs fp32: yolov5n, coco128 val, square 640, 1 thread", "",
             "| model | MB | median ms | time vs fp32 | mAP50-95 | mAP50 | kept |", "|---|---|---|---|---|---|---|",
             f"| fp32 | {fp['size_mb']:.1f} | {fp['latency_ms']:.1f} | 1.00x | {_score(fp, 'map')} | "
             f"{_score(fp, 'map50')} | |"]
    for v in sel["variants"]:
        c = v["config"]
        name = f"int8 {c['activations']} {c['method']} ({c['images']} images)"
        kept = "**chosen**" if v["path"] == sel.get("chosen") else ""
        lines.append(f"| {name} | {v['size_mb']:.1f} | {v['latency_ms']:.1f} | {v['ratio_to_fp32']:.2f}x | "
                     f"{_score(v, 'map')} | {_score(v, 'map50')} | {kept} |")
    return "\n".join(lines) + f"\n\n{sel.get('reason', '')}"


def _score(row: dict, key: str) -> str:
    """'-' when the run was latency only (--no-eval)."""
    return f"{row[key]:.4f}" if row.get(key) is not None else "-"


if __name__ == "__main__":
    raise SystemExit(main())
