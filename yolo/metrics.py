"""Detection metrics: YOLOv5's own P/R/mAP (as printed by its val.py) and COCO mAP through pycocotools.

The YOLOv5-style numbers reproduce `val.py process_batch` and `utils/metrics.py ap_per_class` with
`compute_ap(method="interp")`, so they are comparable with numbers reported by YOLOv5 itself. Note that this
101-point interpolation gives 0.995 (not 1.0) for a perfect detector: YOLOv5 appends the sentinel point
(recall 1, precision 0), and interpolating at recall 1.0 picks that sentinel. COCO numbers come from
pycocotools and are the reference for pruning comparisons.
"""

from __future__ import annotations

import contextlib
import copy
import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Union

import numpy as np
import torch

from yolo.boxes import box_iou, xyxy2xywh

IOU_THRESHOLDS = torch.linspace(0.5, 0.95, 10)
_F1_SMOOTH = 0.1  # fraction of the confidence axis used to smooth the mean F1 curve before its argmax
_trapezoid = getattr(np, "trapezoid", None) or np.trapz  # numpy >= 2 renamed trapz

ImageId = Union[int, str]


def image_id_from_path(path: str | Path) -> ImageId:
    """COCO image id of a file, as YOLOv5 derives it: the numeric stem as int (COCO's ids), else the stem."""
    stem = Path(path).stem
    return int(stem) if stem.isnumeric() else stem


# --------------------------------------------------------------------------------------------------------
# YOLOv5-style metric
# --------------------------------------------------------------------------------------------------------


def _unique_matches(matches: np.ndarray) -> np.ndarray:
    """Reduce [label, detection, iou] candidate matches to one per detection and one per label.

    Same order of operations as YOLOv5: sort by IoU, keep each detection's best label, then (in the
    resulting detection-index order) each label's first remaining detection.
    """
    matches = matches[np.argsort(-matches[:, 2], kind="stable")]
    matches = matches[np.unique(matches[:, 1], return_index=True)[1]]
    return matches[np.unique(matches[:, 0], return_index=True)[1]]


def match_predictions(detections: torch.Tensor, labels: torch.Tensor, iouv: torch.Tensor) -> torch.Tensor:
    """Bool (n, len(iouv)): is detection i a true positive at IoU threshold j (one detection per label)."""
    correct = np.zeros((detections.shape[0], iouv.shape[0]), dtype=bool)
    if detections.shape[0] and labels.shape[0]:
        iou = box_iou(labels[:, 1:5], detections[:, :4])
        same_class = labels[:, 0:1] == detections[:, 5]
        for j, thres in enumerate(iouv.tolist()):
            li, di = torch.nonzero((iou >= thres) & same_class, as_tuple=True)
            if li.numel() == 0:
                continue
            matches = torch.stack((li.to(iou.dtype), di.to(iou.dtype), iou[li, di]), 1).cpu().numpy()
            if matches.shape[0] > 1:
                matches = _unique_matches(matches)
            correct[matches[:, 1].astype(int), j] = True
    return torch.tensor(correct, dtype=torch.bool, device=iouv.device)


def _smooth(y: np.ndarray, fraction: float) -> np.ndarray:
    """Box-filter `y` over `fraction` of its length, padding with edge values (YOLOv5's `smooth`)."""
    nf = round(len(y) * fraction * 2) // 2 + 1  # odd window
    pad = np.ones(nf // 2)
    padded = np.concatenate((pad * y[0], y, pad * y[-1]))
    return np.convolve(padded, np.ones(nf) / nf, mode="valid")


def compute_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """101-point interpolated AP of one PR curve, over the monotone precision envelope (YOLOv5 'interp')."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([1.0], precision, [0.0]))
    mpre = np.flip(np.maximum.accumulate(np.flip(mpre)))
    x = np.linspace(0, 1, 101)
    return float(_trapezoid(np.interp(x, mrec, mpre), x))


def ap_per_class(
    tp: np.ndarray,
    conf: np.ndarray,
    pred_cls: np.ndarray,
    target_cls: np.ndarray,
    eps: float = 1e-16,
) -> dict[str, np.ndarray]:
    """Per-class AP at each IoU threshold plus P and R at the confidence maximising the smoothed mean F1.

    Returns dict with `p`, `r`, `f1` (nc,), `ap` (nc, T), `ap50` (nc,), `ap_mean` (nc,) — `ap` averaged over
    thresholds — and `classes` (nc,) for the classes present in `target_cls`.
    """
    order = np.argsort(-conf, kind="stable")
    tp, conf, pred_cls = tp[order], conf[order], pred_cls[order]
    classes, n_targets = np.unique(target_cls, return_counts=True)
    px = np.linspace(0, 1, 1000)
    ap = np.zeros((len(classes), tp.shape[1]))
    p_curve, r_curve = np.zeros((len(classes), 1000)), np.zeros((len(classes), 1000))
    for ci, c in enumerate(classes):
        sel = pred_cls == c
        if not sel.any():
            continue
        tpc = tp[sel].cumsum(0)
        fpc = (1 - tp[sel]).cumsum(0)
        recall = tpc / (n_targets[ci] + eps)
        precision = tpc / (tpc + fpc)
        r_curve[ci] = np.interp(-px, -conf[sel], recall[:, 0], left=0)
        p_curve[ci] = np.interp(-px, -conf[sel], precision[:, 0], left=1)
        for j in range(tp.shape[1]):
            ap[ci, j] = compute_ap(recall[:, j], precision[:, j])
    f1_curve = 2 * p_curve * r_curve / (p_curve + r_curve + eps)
    best = int(_smooth(f1_curve.mean(0), _F1_SMOOTH).argmax()) if len(classes) else 0
    return {
        "p": p_curve[:, best],
        "r": r_curve[:, best],
        "f1": f1_curve[:, best],
        "ap": ap,
        "ap50": ap[:, 0],
        "ap_mean": ap.mean(1),
        "classes": classes.astype(int),
    }


def _as_tensor(x: torch.Tensor | np.ndarray, cols: int) -> torch.Tensor:
    t = torch.as_tensor(x, dtype=torch.float32).detach().cpu()
    return t.reshape(-1, cols)


class DetectionStats:
    """Accumulates per-image matches so the YOLOv5 metric can be computed over a whole dataset."""

    def __init__(self, iouv: torch.Tensor | None = None) -> None:
        self.iouv = IOU_THRESHOLDS.clone() if iouv is None else iouv.cpu()
        self._tp: list[np.ndarray] = []
        self._conf: list[np.ndarray] = []
        self._pred_cls: list[np.ndarray] = []
        self._target_cls: list[np.ndarray] = []
        self.images = 0

    def add(self, detections: torch.Tensor | np.ndarray, labels: torch.Tensor | np.ndarray) -> None:
        """Record one image: detections (n, 6) xyxy conf cls and labels (m, 5) cls xyxy, same pixel space."""
        det, lab = _as_tensor(detections, 6), _as_tensor(labels, 5)
        self.images += 1
        self._tp.append(match_predictions(det, lab, self.iouv).numpy())
        self._conf.append(det[:, 4].numpy())
        self._pred_cls.append(det[:, 5].numpy())
        self._target_cls.append(lab[:, 0].numpy())

    def compute(self, names: Sequence[str] | Mapping[int, str]) -> dict[str, Any]:
        """YOLOv5 summary (mean P, R, mAP50, mAP50-95) and a row per class that has ground truth."""
        niou = self.iouv.numel()
        tp = np.concatenate(self._tp) if self._tp else np.zeros((0, niou), bool)
        conf = np.concatenate(self._conf) if self._conf else np.zeros(0)
        pred_cls = np.concatenate(self._pred_cls) if self._pred_cls else np.zeros(0)
        target_cls = np.concatenate(self._target_cls) if self._target_cls else np.zeros(0)
        res = ap_per_class(tp, conf, pred_cls, target_cls)
        if not tp.any():  # YOLOv5 reports zeros rather than interpolation artefacts when nothing matched
            for key in ("p", "r", "ap50", "ap_mean"):
                res[key] = np.zeros_like(res[key])
        per_class = [
            {
                "class": int(c),
                "name": _name(names, int(c)),
                "images": sum(bool((t == c).any()) for t in self._target_cls),
                "instances": int((target_cls == c).sum()),
                "p": float(res["p"][k]),
                "r": float(res["r"][k]),
                "ap50": float(res["ap50"][k]),
                "ap": float(res["ap_mean"][k]),
            }
            for k, c in enumerate(res["classes"])
        ]
        return {
            "images": self.images,
            "instances": int(target_cls.size),
            "precision": _mean([row["p"] for row in per_class]),
            "recall": _mean([row["r"] for row in per_class]),
            "map50": _mean([row["ap50"] for row in per_class]),
            "map": _mean([row["ap"] for row in per_class]),
            "per_class": per_class,
        }

    def resampled(self, indices: Sequence[int]) -> DetectionStats:
        """The same records for the images at `indices` (repeats allowed: a bootstrap sample)."""
        out = DetectionStats(self.iouv)
        for i in indices:
            out._tp.append(self._tp[i])
            out._conf.append(self._conf[i])
            out._pred_cls.append(self._pred_cls[i])
            out._target_cls.append(self._target_cls[i])
        out.images = len(indices)
        return out


def paired_bootstrap(
    a: DetectionStats,
    b: DetectionStats,
    names: Sequence[str] | Mapping[int, str],
    key: str = "map50",
    rounds: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """How much of the metric difference a - b is the luck of the val images: resample the images (the same
    draw for both models, recorded in the same order) and recompute. YOLOv5's AP, not pycocotools'."""
    if a.images != b.images or any(
        not np.array_equal(x, y) for x, y in zip(a._target_cls, b._target_cls, strict=True)
    ):
        raise ValueError("paired bootstrap: the two models were not scored on the same images in the same order")
    if a.images == 0:
        raise ValueError("paired bootstrap: no images")
    rng = np.random.default_rng(seed)
    draws = np.empty((rounds, 2))
    for k in range(rounds):
        idx = rng.integers(0, a.images, a.images)
        draws[k] = a.resampled(idx).compute(names)[key], b.resampled(idx).compute(names)[key]
    diffs = draws[:, 0] - draws[:, 1]
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    va, vb = a.compute(names)[key], b.compute(names)[key]
    return {
        "metric": f"YOLOv5 {key}",
        "a": va,
        "b": vb,
        "difference": va - vb,
        "sd": float(diffs.std()),
        "sd_a": float(draws[:, 0].std()),  # each model's own spread over the same draws
        "sd_b": float(draws[:, 1].std()),
        "ci95": [float(lo), float(hi)],
        "images": a.images,
        "rounds": rounds,
        "seed": seed,
    }


def _mean(values: Sequence[float]) -> float:
    return float(np.mean(values)) if len(values) else 0.0


def _name(names: Sequence[str] | Mapping[int, str], c: int) -> str:
    if isinstance(names, Mapping):
        return str(names.get(c, c))
    return names[c] if 0 <= c < len(names) else str(c)


# --------------------------------------------------------------------------------------------------------
# COCO metric (pycocotools)
# --------------------------------------------------------------------------------------------------------


def coco_gt_from_labels(
    images: Sequence[Mapping[str, Any]],
    labels: Mapping[ImageId, np.ndarray],
    names: Sequence[str],
) -> dict[str, Any]:
    """COCO ground-truth dict (category id = class index) from pixel xyxy labels, for in-memory COCOeval."""
    annotations = []
    for img in images:
        rows = np.asarray(labels.get(img["id"], np.zeros((0, 5))), dtype=np.float64).reshape(-1, 5)
        for cls, x1, y1, x2, y2 in rows.tolist():
            w, h = x2 - x1, y2 - y1
            annotations.append(
                {
                    "id": len(annotations) + 1,  # pycocotools treats id 0 as "unmatched"
                    "image_id": img["id"],
                    "category_id": int(cls),
                    "bbox": [x1, y1, w, h],
                    "area": w * h,
                    "iscrowd": 0,
                }
            )
    return {
        "info": {"description": "converted from YOLO labels"},
        "images": [dict(img) for img in images],
        "annotations": annotations,
        "categories": [{"id": i, "name": n, "supercategory": "none"} for i, n in enumerate(names)],
    }


def predictions_to_coco(detections: torch.Tensor | np.ndarray, image_id: ImageId) -> list[dict[str, Any]]:
    """COCO result rows for one image's (n, 6) xyxy conf cls detections in original-image pixels.

    Rounded like YOLOv5's save_one_json (bbox to 3 decimals, score to 5) so json files stay comparable.
    """
    det = _as_tensor(detections, 6)
    xywh = xyxy2xywh(det[:, :4])
    xywh[:, :2] -= xywh[:, 2:] / 2  # centre -> top-left corner
    return [
        {
            "image_id": image_id,
            "category_id": int(d[5]),
            "bbox": [round(v, 3) for v in b],
            "score": round(d[4], 5),
        }
        for d, b in zip(det.tolist(), xywh.tolist())
    ]


def coco_evaluate(
    gt: Mapping[str, Any],
    predictions: Sequence[Mapping[str, Any]],
    names: Sequence[str],
    verbose: bool = False,
) -> dict[str, Any]:
    """COCO bbox AP@[.5:.95] and AP@.5, overall and per class that has ground truth.

    Returns `map`, `map50`, `stats` (COCOeval's 12 numbers), `ap` and `ap50` (dicts class -> value) and
    `per_class` rows. Empty predictions score 0 without running COCOeval (pycocotools cannot load them).
    """
    gt_classes = sorted({int(a["category_id"]) for a in gt["annotations"]})
    if not predictions or not gt_classes:
        return _coco_result([0.0] * 12, {c: 0.0 for c in gt_classes}, {c: 0.0 for c in gt_classes}, names)
    # pycocotools loads only for COCO-protocol scoring (the only user of it)
    from pycocotools.coco import COCO
    from pycocotools.cocoeval import COCOeval

    sink = contextlib.nullcontext() if verbose else contextlib.redirect_stdout(io.StringIO())
    with sink:
        coco_gt = COCO()
        coco_gt.dataset = copy.deepcopy(dict(gt))
        coco_gt.createIndex()
        coco_dt = coco_gt.loadRes([dict(p) for p in predictions])  # loadRes adds keys to the rows it gets
        ev = COCOeval(coco_gt, coco_dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    precision = ev.eval["precision"]  # (T iou, R recall, K cats, A areas, M maxDets)
    cat_index = {c: k for k, c in enumerate(ev.params.catIds)}
    ap = {c: _mean_valid(precision[:, :, cat_index[c], 0, -1]) for c in gt_classes}
    ap50 = {c: _mean_valid(precision[0, :, cat_index[c], 0, -1]) for c in gt_classes}
    return _coco_result([float(s) for s in ev.stats], ap, ap50, names)


def _mean_valid(p: np.ndarray) -> float:
    """Mean precision over entries COCOeval filled in (-1 marks 'no ground truth / not computed')."""
    valid = p[p > -1]
    return float(valid.mean()) if valid.size else 0.0


def _coco_result(
    stats: list[float], ap: dict[int, float], ap50: dict[int, float], names: Sequence[str]
) -> dict[str, Any]:
    return {
        "map": max(stats[0], 0.0),
        "map50": max(stats[1], 0.0),
        "stats": stats,
        "ap": ap,
        "ap50": ap50,
        "per_class": [{"class": c, "name": _name(names, c), "ap": ap[c], "ap50": ap50[c]} for c in ap],
    }
