"""`val`: score a checkpoint (.pt, official or ours) or an exported model (.onnx, OpenVINO .xml, ncnn .param) on a
data.yaml split.

The detector package does not run exported files itself: the command line that registers `val` (prune.py) hands
it a loader (reports.backends.load_backend) as the `load_exported` default, so yolo/ imports no stage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Callable

import torch

from yolo.checkpoint import load_model
from yolo.convention import InputConvention
from yolo.convention import parse as parse_convention
from yolo.data import data_checks, load_data_yaml
from yolo.device import choose_threads, select_device, set_torch_threads
from yolo.fileio import check_writable
from yolo.val import evaluate, renamed_classes_warning


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("val", help="score a model with pycocotools (official YOLOv5 val protocol)",
                       description="Score a .pt (official or ours) or an exported .onnx / .xml / .param model on a "
                       "YOLO-format split.")
    p.add_argument("--weights", required=True,
                   help="model: official YOLOv5 .pt, a yolov5-slim .pt, .onnx, OpenVINO .xml or ncnn .param")
    p.add_argument("--data", required=True, help="data.yaml (YOLOv5 format)")
    p.add_argument("--split", "--task", dest="split", default="val", choices=("val", "train", "test"),
                   help="split to score")
    p.add_argument("--imgsz", "--img", type=int, default=640, help="long side in pixels (default 640)")
    p.add_argument("--batch-size", type=int, default=32, help="images per batch (default 32)")
    p.add_argument("--conf-thres", type=float, default=0.001, help="confidence threshold (default 0.001)")
    p.add_argument("--iou-thres", type=float, default=0.6, help="NMS IoU threshold (default 0.6)")
    p.add_argument("--max-det", type=int, default=300, help="detections kept per image (default 300)")
    p.add_argument("--device", default="cpu", help="cpu, 0, 0,1 ... (default cpu)")
    p.add_argument("--half", action="store_true", help="fp16 inference (CUDA only)")
    p.add_argument("--no-rect", action="store_true", help="square letterbox instead of rectangular batches")
    p.add_argument("--rect-batches", choices=("exact", "yolov5"), default="exact",
                   help="exact: batch images of one shape, scores equal batch 1's at any batch size (default); "
                   "yolov5: pad consecutive groups to one shape as the official val.py (score moves with batch)")
    p.add_argument("--input-convention", default=None, metavar="RESIZE-CHANNELS",
                   help="how images are fed: letterbox-rgb, stretch-bgr, ... (default: the one the checkpoint records; "
                   "another one is refused unless --allow-convention-mismatch)")
    p.add_argument("--allow-convention-mismatch", action="store_true",
                   help="score with an --input-convention other than the model's own")
    p.add_argument("--workers", type=int, default=2, help="dataloader workers (default 2)")
    p.add_argument("--threads", type=int, default=0,
                   help="intra-op threads of torch (.pt), ONNX Runtime (.onnx), OpenVINO (.xml) or ncnn (.param) "
                        "(default: OMP_NUM_THREADS when set, else torch's default / all cores)")
    p.add_argument("--save-json", nargs="?", const="auto", default=None,
                   help="write COCO-format predictions (default path: <weights stem>_predictions.json)")
    p.add_argument("--verbose", action="store_true", help="per-class AP table")
    p.add_argument("--strict", action="store_true",
                   help="stop (exit 2) on any bad label row, clipped box, unreadable image or non-image file in the "
                        "split, instead of a warning that counts what was skipped")
    p.set_defaults(func=run_val)


EXPORTED_SUFFIXES = (".onnx", ".xml", ".param")  # ONNX, OpenVINO IR, ncnn
EXPORT_FOLDERS = ("_openvino_model", "_ncnn_model")  # the folders `export --format openvino|ncnn` writes


def is_exported(weights: str | Path) -> bool:
    """True for a file an exported-model runtime runs (or its export folder), False for a checkpoint."""
    name = Path(weights).name.lower()
    return name.endswith(EXPORTED_SUFFIXES) or name.endswith(EXPORT_FOLDERS)


def load_scorable(
    weights: str | Path, device: str = "cpu", threads: int = 0, load_exported: Callable[..., Any] | None = None
) -> Any:
    """A torch model, or for an exported file (.onnx, .xml, .param) what `load_exported(path, threads=threads)`
    returns (an ONNX Runtime / OpenVINO / ncnn predictor with the interface `yolo.val.evaluate` accepts)."""
    weights = Path(weights)
    if is_exported(weights):
        if load_exported is None:
            raise ValueError(f"{weights}: scoring an exported model needs its runtime's predictor (run `prune.py val`)")
        return load_exported(weights, threads=threads)
    model, _ = load_model(weights, device)
    return model


def run_val(args: argparse.Namespace) -> dict:
    save_json = args.save_json
    if save_json == "auto":
        save_json = Path(args.weights).with_name(f"{Path(args.weights).stem}_predictions.json")
    if save_json:
        check_writable(save_json, "--save-json", folder=False)  # before the scoring, not after it
    device = select_device(args.device)
    convention = _convention_flag(args.input_convention)
    data = load_data_yaml(args.data)
    threads, threads_text = _threads(args.threads, str(args.weights))
    model = load_scorable(args.weights, str(device), threads, getattr(args, "load_exported", None))
    warning = renamed_classes_warning(model.names, data.names, args.weights, args.data)
    if warning:
        print(warning, file=sys.stderr, flush=True)
    with data_checks(strict=getattr(args, "strict", False)):
        res = evaluate(model, data, split=args.split, imgsz=args.imgsz, batch_size=args.batch_size,
                       conf_thres=args.conf_thres, iou_thres=args.iou_thres, max_det=args.max_det, device=device,
                       half=args.half, rect=not args.no_rect, verbose=False, save_json=save_json,
                       workers=args.workers, rect_batches=args.rect_batches, convention=convention,
                       allow_convention_mismatch=args.allow_convention_mismatch)
    res["threads"] = threads_text
    print_results(res, verbose=args.verbose)
    return res


def _convention_flag(text: str | None) -> InputConvention | None:
    if not text:
        return None
    try:
        return parse_convention(text)
    except ValueError as e:
        raise ValueError(f"--input-convention: {e}") from None


def _threads(requested: int, weights: str) -> tuple[int, str]:
    """--threads, else OMP_NUM_THREADS, else the backend's default (0 for an exported model's runtime: all cores),
    and the words that say which and why (printed with the speed line, so a bad-input error stays the only line)."""
    if is_exported(weights):
        runtime = "ONNX Runtime" if weights.lower().endswith(".onnx") else "runtime"
        n, why = choose_threads(requested, 0, f"{runtime}'s default")
        return n, f"{n or 'all'} {runtime} thread{'' if n == 1 else 's'} ({why})"
    n, why = set_torch_threads(requested, torch.get_num_threads(), "torch's default")
    return n, f"{n} torch thread{'' if n == 1 else 's'} ({why})"


def print_results(res: dict, verbose: bool = False) -> None:
    # start-up: rich loads only when a command prints a table (prune.py imports every command module)
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
    on = f" on {res['threads']}" if res.get("threads") else ""
    console.print(f"Speed: {s['pre']:.1f} ms pre-process, {s['inf']:.1f} ms inference, {s['nms']:.1f} ms NMS per image"
                  f"{on}")
    if res.get("predictions_json"):
        console.print(f"COCO predictions saved to {res['predictions_json']}")
