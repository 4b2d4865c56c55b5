"""Greedy non-maximum suppression in pure torch (no torchvision) with YOLOv5's post-processing semantics.

The greedy kernel gives exactly the keep set of `torchvision.ops.nms`: a box is dropped when its IoU with an
already kept, higher-scoring box is strictly greater than the threshold, IoU computed with the same float
operations. It is made fast without a Python loop over boxes by working on score-sorted blocks:

1. boxes of a block that overlap any box kept in earlier blocks are dropped with one (block, kept) IoU;
2. the survivors of the block are resolved among themselves with the block's upper-triangular overlap
   matrix by fixed-point iteration `keep_i = not any(keep_j and overlap_ji for j < i)`. Entry i is final
   once all j < i are, so the iteration reaches the unique greedy solution after at most (longest chain of
   suppressions) steps, usually a handful.

Kept boxes come out in descending score order, so the scan stops as soon as `max_keep` boxes are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from yolo.boxes import xywh2xyxy

MAX_WH = 7680  # class offset for class-aware NMS: larger than any image side
_BLOCK = 512  # boxes resolved per step; bounds memory at _BLOCK * max(_BLOCK, kept) IoU entries


def _areas(b: torch.Tensor) -> torch.Tensor:
    return (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])


def _iou(a: torch.Tensor, area_a: torch.Tensor, b: torch.Tensor, area_b: torch.Tensor) -> torch.Tensor:
    """IoU (len(a), len(b)) without eps, matching torchvision's kernel bit for bit; in-place to save memory."""
    w = torch.min(a[:, None, 2], b[None, :, 2]).sub_(torch.max(a[:, None, 0], b[None, :, 0])).clamp_(min=0)
    h = torch.min(a[:, None, 3], b[None, :, 3]).sub_(torch.max(a[:, None, 1], b[None, :, 1])).clamp_(min=0)
    inter = w.mul_(h)
    union = (area_a[:, None] + area_b[None, :]).sub_(inter)
    return inter.div_(union)


def _threshold(iou_thres: float, dtype: torch.dtype) -> torch.Tensor:
    """`iou_thres` in the boxes' dtype such that `iou > t` equals torchvision's float-vs-double `iou > thres`."""
    t = torch.tensor(iou_thres, dtype=dtype)
    if t.item() > iou_thres:  # rounded up: an IoU equal to t is not > iou_thres, so compare with the float below
        t = torch.nextafter(t, torch.tensor(float("-inf"), dtype=dtype))
    return t


def _resolve_block(overlap: torch.Tensor) -> torch.Tensor:
    """Greedy keep mask of score-sorted boxes given overlap[j, i] = (j < i and IoU > thres)."""
    weights = overlap.to(torch.float32)
    keep = torch.ones(overlap.shape[0], dtype=torch.bool, device=overlap.device)
    for _ in range(overlap.shape[0]):
        new = (keep.to(torch.float32) @ weights) == 0
        if torch.equal(new, keep):
            break
        keep = new
    return keep


def nms(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    iou_thres: float,
    max_keep: int | None = None,
) -> torch.Tensor:
    """Greedy NMS; returns indices of kept boxes in descending score order (at most `max_keep`)."""
    n = boxes.shape[0]
    if n == 0 or (max_keep is not None and max_keep <= 0):
        return torch.zeros(0, dtype=torch.long, device=boxes.device)
    order = scores.argsort(descending=True, stable=True)
    b = boxes[order]
    if not b.is_floating_point():
        b = b.float()
    areas = _areas(b)
    thres = _threshold(iou_thres, b.dtype).to(b.device)
    kept: list[torch.Tensor] = []  # positions in `order`
    kept_boxes, kept_areas = b[:0], areas[:0]
    n_kept = 0
    for start in range(0, n, _BLOCK):
        blk, blk_areas = b[start : start + _BLOCK], areas[start : start + _BLOCK]
        idx = torch.arange(blk.shape[0], device=b.device)
        if n_kept:
            alive = ~(_iou(blk, blk_areas, kept_boxes, kept_areas) > thres).any(1)
            idx = idx[alive]
            if idx.numel() == 0:
                continue
        cand, cand_areas = blk[idx], blk_areas[idx]
        overlap = (_iou(cand, cand_areas, cand, cand_areas) > thres).triu_(diagonal=1)
        idx = idx[_resolve_block(overlap)]
        kept.append(idx + start)
        kept_boxes = torch.cat((kept_boxes, blk[idx]))
        kept_areas = torch.cat((kept_areas, blk_areas[idx]))
        n_kept += idx.numel()
        if max_keep is not None and n_kept >= max_keep:
            break
    return order[torch.cat(kept)[:max_keep]]


def candidates(x: torch.Tensor, conf_thres: float, multi_label: bool = False) -> torch.Tensor:
    """(k, 6) xyxy, conf, cls rows of one image whose class confidence obj*cls exceeds `conf_thres`."""
    x = x[x[:, 4] > conf_thres]
    box = xywh2xyxy(x[:, :4])
    cls_conf = x[:, 5:] * x[:, 4:5]
    if multi_label:
        i, j = (cls_conf > conf_thres).nonzero(as_tuple=True)
        return torch.cat((box[i], cls_conf[i, j, None], j[:, None].to(x.dtype)), 1)
    conf, j = cls_conf.max(1, keepdim=True)
    out = torch.cat((box, conf, j.to(x.dtype)), 1)
    return out[conf.view(-1) > conf_thres]


def _top_scores(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the `k` best scores, best first; topk is much cheaper than a full sort when k << n."""
    if scores.numel() > k:
        return scores.topk(k).indices
    return scores.argsort(descending=True, stable=True)


def non_max_suppression(
    prediction: torch.Tensor | Sequence[torch.Tensor],
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    classes: list[int] | None = None,
    agnostic: bool = False,
    multi_label: bool = False,
    max_det: int = 300,
    max_nms: int = 30000,
) -> list[torch.Tensor]:
    """YOLOv5 post-processing of decoded predictions (B, N, 5+nc) into per-image (n, 6) xyxy, conf, cls.

    A tuple/list (inference output, feature maps), as the model's eval forward returns, is accepted too.
    Output rows are sorted by confidence; boxes of different classes never suppress each other unless
    `agnostic`, thanks to a per-class coordinate offset of `MAX_WH`.
    """
    if isinstance(prediction, (list, tuple)):
        prediction = prediction[0]
    nc = prediction.shape[2] - 5
    multi_label = multi_label and nc > 1
    empty = torch.zeros((0, 6), dtype=prediction.dtype, device=prediction.device)
    output = []
    for x in prediction:
        x = candidates(x, conf_thres, multi_label)
        if classes is not None:
            x = x[(x[:, 5:6] == torch.tensor(classes, device=x.device, dtype=x.dtype)).any(1)]
        if x.shape[0] == 0:
            output.append(empty.clone())
            continue
        x = x[_top_scores(x[:, 4], max_nms)]
        offsets = x[:, 5:6] * (0 if agnostic else MAX_WH)
        keep = nms(x[:, :4] + offsets, x[:, 4], iou_thres, max_keep=max_det)
        output.append(x[keep])
    return output
