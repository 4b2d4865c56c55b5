"""Scoring a detector on a YOLO-format split with the official protocol, COCO mAP from pycocotools.

Protocol (as YOLOv5 val.py): long side resized to imgsz, rectangular batches sorted by aspect ratio with
half-a-stride padding, conf 0.001, IoU 0.6 class-aware multi-label NMS, max 300 detections, predictions
mapped back to original pixels. Models are either a torch module or a predictor object (e.g. an ONNX
Runtime session wrapper) with `names`, `stride`, `input_shape` and `__call__(float images) -> decoded`.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from yolo.boxes import scale_boxes, xywh2xyxy
from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import InputConvention
from yolo.data import create_dataloader, load_data_yaml
from yolo.errors import classes_text
from yolo.fileio import atomic_write_text
from yolo.imgsz import max_stride
from yolo.metrics import (
    DetectionStats,
    coco_evaluate,
    coco_gt_from_labels,
    image_id_from_path,
    predictions_to_coco,
)
from yolo.model import de_parallel
from yolo.nms import non_max_suppression


class ScoringError(ValueError):
    """The model and the data cannot be scored together (e.g. class counts differ)."""


@dataclass
class Timer:
    """Accumulated milliseconds per stage, reported per image like YOLOv5."""

    totals: dict[str, float] = field(default_factory=lambda: {"pre": 0.0, "inf": 0.0, "nms": 0.0})

    def add(self, key: str, seconds: float) -> None:
        self.totals[key] += seconds * 1e3

    def per_image(self, n: int) -> dict[str, float]:
        return {k: v / max(n, 1) for k, v in self.totals.items()}


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _predictor(model: Any, device: torch.device, half: bool) -> tuple[Callable, list[str], int, Any]:
    """A callable images->decoded predictions, class names, max stride and fixed input shape (or None)."""
    if isinstance(model, nn.Module):
        m = de_parallel(model)
        m.eval().to(device)
        if half:
            m.half()
        stride = max_stride(m)

        def run(x: torch.Tensor) -> torch.Tensor:
            out = m(x)
            return out[0] if isinstance(out, (list, tuple)) else out

        return run, list(m.names), stride, None
    return model, list(model.names), int(getattr(model, "stride", 32)), getattr(model, "input_shape", None)


def _check_classes(names: list[str], data_names: list[str], data_path: Any) -> None:
    if len(names) != len(data_names):
        raise ScoringError(
            f"model predicts {classes_text(len(names))} but {data_path} has {len(data_names)} "
            "(score with a model trained on this data, or fine-tune first: finetune.py --weights ... --data ...)"
        )


def short_names(names: Sequence[str], limit: int = 6) -> str:
    """Class names for a one-line message: 'helmet, vest' or 'a, b, c, d, e, f, ... (80)'."""
    names = [str(n) for n in names]
    more = f", ... ({len(names)})" if len(names) > limit else ""
    return ", ".join(names[:limit]) + more


def has_class_names(names: Sequence[str]) -> bool:
    """False for the placeholder names '0', '1', ... a model built without a data.yaml carries."""
    return [str(n) for n in names] != [str(i) for i in range(len(names))]


def renamed_classes_warning(names: Sequence[str], data_names: Sequence[str], model: Any, data: Any) -> str | None:
    """Same class count, other names: scored by class index as if they were the same classes, which is right for
    a renaming and meaningless for other classes, so `val` says so (None when the names agree, or when the model's
    names are only its class indices: a model that was never told its classes has nothing to contradict)."""
    if len(names) != len(data_names) or [str(n) for n in names] == [str(n) for n in data_names]:
        return None
    if not has_class_names(names):
        return None
    return (f"warning: {model} predicts {short_names(names)}; {data} names its classes {short_names(data_names)}: "
            "scored by class index as the same classes (for other classes, fine-tune with finetune.py --new-head)")


def build_val_loader(
    data_cfg: Any,
    split: str = "val",
    imgsz: int = 640,
    batch_size: int = 32,
    stride: int = 32,
    rect: bool = True,
    workers: int = 2,
    rect_batches: str = "exact",
    convention: InputConvention = DEFAULT_CONVENTION,
):
    """The scoring dataloader: rectangular batches (pad 0.5) unless rect is off (fixed square input) or the model's
    input `convention` stretches images to the square size.

    `rect_batches="exact"` batches only images of one letterboxed shape, so the score does not depend on
    the batch size; "yolov5" pads consecutive groups to a common shape as the official val.py does.
    """
    files = getattr(data_cfg, split)
    if not files:
        raise ScoringError(f"{data_cfg.yaml_path}: split '{split}' has no images")
    loader, _ = create_dataloader(
        files,
        imgsz,
        batch_size,
        stride=stride,
        names=data_cfg.names,
        augment=False,
        rect=rect,
        pad=0.5 if rect else 0.0,
        workers=workers,
        shuffle=False,
        prefix=f"{split}: ",
        rect_batches=rect_batches,
        convention=convention,
    )
    return loader


def evaluate(
    model: Any,
    data_cfg: Any,
    split: str = "val",
    imgsz: int = 640,
    batch_size: int = 32,
    conf_thres: float = 0.001,
    iou_thres: float = 0.6,
    max_det: int = 300,
    device: str | torch.device = "cpu",
    half: bool = False,
    rect: bool = True,
    dataloader: Any = None,
    verbose: bool = False,
    save_json: str | Path | None = None,
    workers: int = 2,
    progress: bool = True,
    rect_batches: str = "exact",
    stats: DetectionStats | None = None,
    convention: InputConvention | None = None,
    allow_convention_mismatch: bool = False,
) -> dict[str, Any]:
    """Score `model` on a split; returns COCO mAP (pycocotools), YOLOv5-style P/R and per-stage speed.

    `stats`, when given (empty), receives the per-image matches (for a paired bootstrap of two models' scores).
    Images are fed in the model's own input convention (`model.input_convention`, yolo.convention); another
    `convention` is refused unless `allow_convention_mismatch` (its score would silently be the wrong one)."""
    if not hasattr(data_cfg, "names"):
        data_cfg = load_data_yaml(data_cfg)
    device = torch.device(device) if not isinstance(device, torch.device) else device
    run, names, stride, fixed = _predictor(model, device, half and device.type == "cuda")
    _check_classes(names, data_cfg.names, data_cfg.yaml_path)
    convention = _convention(model, convention, allow_convention_mismatch)
    if dataloader is None:
        size = max(fixed) if fixed else imgsz
        dataloader = build_val_loader(
            data_cfg, split, size, batch_size, stride, rect and not fixed, workers, rect_batches, convention
        )
    acc = _Accumulator(data_cfg.names, stats)
    timer = Timer()
    with torch.inference_mode(), _progress(progress, len(dataloader), f"scoring {split}") as advance:
        for imgs, targets, paths, shapes in dataloader:
            x, dets = _timed_batch(run, imgs, device, half, timer, conf_thres, iou_thres, max_det)
            acc.add_batch(x.shape[2:], dets, targets, paths, shapes)
            advance()
    result = acc.finish(verbose)
    result["speed_ms"] = timer.per_image(result["images"])
    result.update({"split": split, "imgsz": imgsz if not fixed else list(fixed), "conf_thres": conf_thres,
                   "iou_thres": iou_thres, "max_det": max_det, "input_convention": convention.text})
    if save_json:
        _write_json(Path(save_json), acc.json_predictions)
        result["predictions_json"] = str(save_json)
    return result


def _convention(model: Any, asked: InputConvention | None, allow_mismatch: bool) -> InputConvention:
    own = getattr(de_parallel(model) if isinstance(model, nn.Module) else model, "input_convention", DEFAULT_CONVENTION)
    if asked is None or asked == own:
        return own
    if not allow_mismatch:
        raise ScoringError(f"the model was trained on {own.text} input, scoring was asked with {asked.text}: its "
                           "score would be the wrong one (--allow-convention-mismatch to score it anyway)")
    return asked


def _timed_batch(run, imgs, device, half, timer, conf_thres, iou_thres, max_det):
    """One batch through the model and NMS, each stage timed as the official val.py times it (pre, inf, nms)."""
    t0 = time.perf_counter()
    x = imgs.to(device, non_blocking=True)
    x = (x.half() if half and device.type == "cuda" else x.float()) / 255
    _sync(device)
    t1 = time.perf_counter()
    preds = run(x)
    _sync(device)
    t2 = time.perf_counter()
    dets = non_max_suppression(preds.float(), conf_thres, iou_thres, multi_label=True, max_det=max_det)
    t3 = time.perf_counter()
    timer.add("pre", t1 - t0)
    timer.add("inf", t2 - t1)
    timer.add("nms", t3 - t2)
    return x, dets


class _Accumulator:
    """Per-image ground truth and detections in original pixels, for both metrics."""

    def __init__(self, names: list[str], stats: DetectionStats | None = None):
        self.names = names
        self.stats = DetectionStats() if stats is None else stats
        self.images: list[dict] = []
        self.labels: dict[Any, np.ndarray] = {}
        self.coco_predictions: list[dict] = []
        self.json_predictions: list[dict] = []
        self._ids: set = set()

    def add_batch(self, input_hw, dets, targets, paths, shapes) -> None:
        h, w = int(input_hw[0]), int(input_hw[1])
        for si, det in enumerate(dets):
            (h0, w0), ratio_pad = shapes[si][0], shapes[si][1]
            lab = targets[targets[:, 0] == si, 1:].float().cpu()
            boxes = xywh2xyxy(lab[:, 1:5]) * torch.tensor([w, h, w, h], dtype=torch.float32)
            scale_boxes((h, w), boxes, (h0, w0), ratio_pad)
            labels = torch.cat((lab[:, :1], boxes), 1)
            pred = det.float().cpu().clone()
            scale_boxes((h, w), pred[:, :4], (h0, w0), ratio_pad)
            self.stats.add(pred, labels)
            json_id = image_id_from_path(paths[si])
            coco_id = len(self.images) + 1  # unique even when two folders hold the same file stem
            self.images.append({"id": coco_id, "file_name": Path(paths[si]).name, "width": int(w0), "height": int(h0)})
            self.labels[coco_id] = labels.numpy()
            rows = predictions_to_coco(pred, coco_id)
            self.coco_predictions.extend(rows)
            self.json_predictions.extend({**r, "image_id": json_id} for r in rows)

    def finish(self, verbose: bool) -> dict[str, Any]:
        own = self.stats.compute(self.names)
        gt = coco_gt_from_labels(self.images, self.labels, self.names)
        coco = coco_evaluate(gt, self.coco_predictions, self.names, verbose=verbose)
        own_by_class = {row["class"]: row for row in own["per_class"]}
        per_class = [
            {
                **own_by_class.get(row["class"], {"class": row["class"], "name": row["name"]}),
                "ap50": row["ap50"],
                "ap": row["ap"],
                "yolo_ap50": own_by_class.get(row["class"], {}).get("ap50", 0.0),
                "yolo_ap": own_by_class.get(row["class"], {}).get("ap", 0.0),
            }
            for row in coco["per_class"]
        ]
        return {
            "evaluator": "pycocotools",
            "map50": coco["map50"],
            "map": coco["map"],
            "precision": own["precision"],
            "recall": own["recall"],
            "yolo_map50": own["map50"],
            "yolo_map": own["map"],
            "images": own["images"],
            "instances": own["instances"],
            "per_class": per_class,
            "map_by_size": map_by_size(coco["stats"], gt),
        }


SIZES = (("small", 0, 32**2), ("medium", 32**2, 96**2), ("large", 96**2, float("inf")))  # COCO's areas, px^2


def map_by_size(stats: list[float], gt: dict) -> dict[str, float | None]:
    """COCO mAP50-95 of small, medium and large objects (areas in original-image pixels); None for a size the
    split has no objects of. Pruning tends to cost the small ones first: the stride-8 path is where the FLOPs are."""
    areas = [a["area"] for a in gt["annotations"]]
    return {name: (max(float(stats[3 + i]), 0.0) if any(lo <= a < hi for a in areas) else None)
            for i, (name, lo, hi) in enumerate(SIZES)}


def _write_json(path: Path, rows: list[dict]) -> None:
    atomic_write_text(path, json.dumps(rows))


class _progress:
    """A transient rich progress bar when asked for and on a terminal; otherwise silent."""

    def __init__(self, enabled: bool, total: int, label: str):
        self.enabled, self.total, self.label = enabled, total, label
        self._bar = None

    def __enter__(self) -> Callable[[], None]:
        if not (self.enabled and sys.stderr.isatty()):
            return lambda: None
        # start-up: rich loads only when a live progress bar is shown
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

        self._bar = Progress("[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
                             TimeElapsedColumn(), transient=True)
        self._bar.start()
        task = self._bar.add_task(self.label, total=self.total)
        return lambda: self._bar.advance(task)

    def __exit__(self, *exc) -> None:
        if self._bar is not None:
            self._bar.stop()
