"""`val`: score a checkpoint (.pt, official or ours) or an exported .onnx on a data.yaml split."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("val", help="score a model with pycocotools (official YOLOv5 val protocol)",
                       description="Score a .pt (official or ours) or .onnx model on a YOLO-format split.")
    p.add_argument("--weights", required=True,
                   help="model: official YOLOv5 .pt, a yolov5-slim .pt, .onnx, OpenVINO .xml or ncnn .param")
    p.add_argument("--data", required=True, help="data.yaml (YOLOv5 format)")
    p.add_argument("--split", "--task", dest="split", default="val", choices=("val", "train", "test"))
    p.add_argument("--imgsz", "--img", type=int, default=640, help="long side in pixels (default 640)")
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--conf-thres", type=float, default=0.001)
    p.add_argument("--iou-thres", type=float, default=0.6)
    p.add_argument("--max-det", type=int, default=300)
    p.add_argument("--device", default="cpu", help="cpu, 0, 0,1 ... (default cpu)")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    p.add_argument("--no-rect", action="store_true", help="square letterbox instead of rectangular batches")
    p.add_argument("--rect-batches", choices=("exact", "yolov5"), default="exact",
                   help="exact: batch images of one shape, scores equal batch 1's at any batch size (default); "
                   "yolov5: pad consecutive groups to one shape as the official val.py (score moves with batch)")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=0, help="ONNX Runtime / OpenVINO / ncnn threads (0 = all cores)")
    p.add_argument("--save-json", nargs="?", const="auto", default=None,
                   help="write COCO-format predictions (default path: <weights stem>_predictions.json)")
    p.add_argument("--verbose", action="store_true", help="per-class AP table")
    p.set_defaults(func=run_val)


def load_scorable(weights: str | Path, device: str = "cpu", threads: int = 0) -> Any:
    """A torch model or an exported file's predictor (ONNX Runtime, OpenVINO, ncnn), chosen by file suffix."""
    from reports.backends import backend_kind, load_backend

    weights = Path(weights)
    if backend_kind(weights):
        return load_backend(weights, threads=threads)
    from yolo.checkpoint import load_model

    model, _ = load_model(weights, device)
    return model


def run_val(args: argparse.Namespace) -> dict:
    from yolo.data import load_data_yaml
    from yolo.device import select_device
    from yolo.val import evaluate

    device = select_device(args.device)
    data = load_data_yaml(args.data)
    model = load_scorable(args.weights, str(device), args.threads)
    save_json = args.save_json
    if save_json == "auto":
        save_json = Path(args.weights).with_name(f"{Path(args.weights).stem}_predictions.json")
    res = evaluate(model, data, split=args.split, imgsz=args.imgsz, batch_size=args.batch_size,
                   conf_thres=args.conf_thres, iou_thres=args.iou_thres, max_det=args.max_det, device=device,
                   half=args.half, rect=not args.no_rect, verbose=False, save_json=save_json, workers=args.workers,
                   rect_batches=args.rect_batches)
    print_results(res, verbose=args.verbose)
    return res


def print_results(res: dict, verbose: bool = False) -> None:
    from rich.console import Console
    from rich.table import Table

    t = Table(title=f"{res['split']}: {res['images']} images, {res['instances']} boxes ({res['evaluator']})")
    for col in ("class", "images", "boxes", "P", "R", "mAP50", "mAP50-95"):
        t.add_column(col, justify="right" if col != "class" else "left")
    t.add_row("all", str(res["images"]), str(res["instances"]), f"{res['precision']:.3f}", f"{res['recall']:.3f}",
              f"{res['map50']:.3f}", f"{res['map']:.3f}")
    if verbose:
        for row in res["per_class"]:
            t.add_row(str(row["name"]), str(row.get("images", "")), str(row.get("instances", "")),
                      f"{row.get('p', 0):.3f}", f"{row.get('r', 0):.3f}", f"{row['ap50']:.3f}", f"{row['ap']:.3f}")
    console = Console()
    console.print(t)
    s = res["speed_ms"]
    console.print(f"Speed: {s['pre']:.1f} ms pre-process, {s['inf']:.1f} ms inference, {s['nms']:.1f} ms NMS per image")
    if res.get("predictions_json"):
        console.print(f"COCO predictions saved to {res['predictions_json']}")
