"""The YOLOv5 training loss: anchor matching by shape ratio, CIoU box loss, IoU-target objectness, class BCE.

Behaviour follows the official YOLOv5 `ComputeLoss` (v6.x):

- a target is assigned to every anchor of a level whose width and height ratios to the target stay within
  `anchor_t` (max(r, 1/r) < anchor_t), to its own grid cell and to the two neighbouring cells whose centre
  lies within half a cell of the target centre (left/right and up/down);
- box regression `xy = 2 * sigmoid - 0.5` (cell offset), `wh = (2 * sigmoid) ** 2 * anchor`, CIoU loss;
- objectness BCE against the detached, clamped IoU of the assigned prediction (gr = 1.0);
- class BCE with label smoothing, skipped when there is a single class;
- per-level objectness balance [4.0, 1.0, 0.4] (five levels: [4.0, 1.0, 0.25, 0.06, 0.02]);
- optional focal loss (`fl_gamma > 0`).

The hyperparameter gains `box`, `obj`, `cls` are used as given: scale them first with `scale_loss_gains`
(the trainer does) to get YOLOv5's per-layer / per-class / per-image-size scaling.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import torch
from torch import nn

# Grid-cell offsets tried for each target: own cell, then left, up, right, down (times 0.5 = half a cell).
_NEIGHBOUR_OFFSETS = ((0.0, 0.0), (1.0, 0.0), (0.0, 1.0), (-1.0, 0.0), (0.0, -1.0))
_CELL_BIAS = 0.5


def scale_loss_gains(hyp: Mapping, nl: int, nc: int, imgsz: int) -> dict:
    """Return a copy of `hyp` with YOLOv5's scaling of the loss gains applied.

    box *= 3 / nl; cls *= nc / 80 * 3 / nl; obj *= (imgsz / 640) ** 2 * 3 / nl.
    """
    out = dict(hyp)
    out["box"] = hyp["box"] * 3 / nl
    out["cls"] = hyp["cls"] * nc / 80 * 3 / nl
    out["obj"] = hyp["obj"] * (imgsz / 640) ** 2 * 3 / nl
    return out


def smooth_bce_targets(eps: float = 0.0) -> tuple[float, float]:
    """Positive and negative class targets under label smoothing `eps` (1 - eps/2, eps/2)."""
    return 1.0 - 0.5 * eps, 0.5 * eps


class FocalLoss(nn.Module):
    """Focal modulation of a BCE-with-logits loss: alpha balance and (1 - p_t) ** gamma."""

    def __init__(self, loss_fcn: nn.BCEWithLogitsLoss, gamma: float = 1.5, alpha: float = 0.25):
        super().__init__()
        self.loss_fcn = loss_fcn
        self.gamma = gamma
        self.alpha = alpha
        self.reduction = loss_fcn.reduction
        self.loss_fcn.reduction = "none"

    def forward(self, pred: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
        loss = self.loss_fcn(pred, true)
        prob = pred.sigmoid()
        p_t = true * prob + (1 - true) * (1 - prob)
        alpha_t = true * self.alpha + (1 - true) * (1 - self.alpha)
        loss = loss * alpha_t * (1.0 - p_t) ** self.gamma
        if self.reduction == "mean":
            return loss.mean()
        if self.reduction == "sum":
            return loss.sum()
        return loss


def bbox_ciou(box1: torch.Tensor, box2: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """Complete IoU of paired boxes given as (n, 4) [cx, cy, w, h]; returns (n,)."""
    (x1, y1, w1, h1), (x2, y2, w2, h2) = box1.unbind(-1), box2.unbind(-1)
    b1x1, b1x2, b1y1, b1y2 = x1 - w1 / 2, x1 + w1 / 2, y1 - h1 / 2, y1 + h1 / 2
    b2x1, b2x2, b2y1, b2y2 = x2 - w2 / 2, x2 + w2 / 2, y2 - h2 / 2, y2 + h2 / 2
    h1, h2 = h1 + eps, h2 + eps  # avoid dividing by zero in the aspect term

    inter = (torch.min(b1x2, b2x2) - torch.max(b1x1, b2x1)).clamp(0) * (
        torch.min(b1y2, b2y2) - torch.max(b1y1, b2y1)
    ).clamp(0)
    union = w1 * h1 + w2 * h2 - inter + eps
    iou = inter / union

    cw = torch.max(b1x2, b2x2) - torch.min(b1x1, b2x1)  # enclosing box
    ch = torch.max(b1y2, b2y2) - torch.min(b1y1, b2y1)
    c2 = cw**2 + ch**2 + eps  # squared diagonal of the enclosing box
    rho2 = (x2 - x1) ** 2 + (y2 - y1) ** 2  # squared centre distance
    v = (4 / math.pi**2) * (torch.atan(w2 / h2) - torch.atan(w1 / h1)).pow(2)
    with torch.no_grad():
        alpha = v / (v - iou + (1 + eps))
    return iou - (rho2 / c2 + v * alpha)


class YoloLoss:
    """YOLOv5 loss for a model whose last layer is a `Detect` head.

    `hyp` needs the keys box, obj, cls, cls_pw, obj_pw, anchor_t, fl_gamma and optionally label_smoothing.
    Call with the raw training outputs (list of (B, na, ny, nx, no)) and targets (n, 6)
    [image index, class, cx, cy, w, h] normalised to 0-1; returns (total * batch_size, detached (box, obj, cls)).
    """

    max_grad_norm: float | None = 10.0  # the trainer clips the gradient norm to this before a step (YOLOv5's)

    def __init__(self, model: nn.Module, hyp: Mapping):
        detect = _detect_head(model)
        device = detect.anchors.device
        self.hyp = dict(hyp)
        self.device = device
        self.nc, self.nl, self.na = detect.nc, detect.nl, detect.na
        self.anchors = detect.anchors  # (nl, na, 2) in grid units
        self.balance = objectness_balance(detect)
        self.gr = 1.0
        self.cp, self.cn = smooth_bce_targets(float(hyp.get("label_smoothing", 0.0)))
        bce_cls = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(hyp["cls_pw"])], device=device))
        bce_obj = nn.BCEWithLogitsLoss(pos_weight=torch.tensor([float(hyp["obj_pw"])], device=device))
        gamma = float(hyp.get("fl_gamma", 0.0))
        if gamma > 0:
            bce_cls, bce_obj = FocalLoss(bce_cls, gamma), FocalLoss(bce_obj, gamma)
        self.bce_cls, self.bce_obj = bce_cls, bce_obj

    def __call__(self, preds: Sequence[torch.Tensor], targets: torch.Tensor):
        lbox = torch.zeros(1, device=self.device)
        lobj = torch.zeros(1, device=self.device)
        lcls = torch.zeros(1, device=self.device)
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)

        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=pi.device)
            n = b.shape[0]
            if n:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pxy = pxy.sigmoid() * 2 - 0.5
                pwh = (pwh.sigmoid() * 2) ** 2 * anchors[i]
                iou = bbox_ciou(torch.cat((pxy, pwh), 1), tbox[i])
                lbox += (1.0 - iou).mean()

                iou = iou.detach().clamp(0).to(tobj.dtype)
                if self.gr < 1:
                    iou = (1.0 - self.gr) + self.gr * iou
                tobj[b, a, gj, gi] = iou

                if self.nc > 1:
                    t = torch.full_like(pcls, self.cn)
                    t[torch.arange(n, device=pcls.device), tcls[i]] = self.cp
                    lcls += self.bce_cls(pcls, t)

            lobj += self.bce_obj(pi[..., 4], tobj) * self.balance[i]

        lbox *= self.hyp["box"]
        lobj *= self.hyp["obj"]
        lcls *= self.hyp["cls"]
        bs = preds[0].shape[0]
        return (lbox + lobj + lcls) * bs, torch.cat((lbox, lobj, lcls)).detach()

    def build_targets(self, preds: Sequence[torch.Tensor], targets: torch.Tensor):
        """Assign targets to (image, anchor, cell) per level.

        Returns per level: class ids, target boxes (xy offset in the cell, wh in grid units), index tuples
        (image, anchor, grid y, grid x) and the matched anchors (grid units).
        """
        na, nt = self.na, targets.shape[0]
        dev = targets.device
        tcls, tbox, indices, anch = [], [], [], []
        gain = torch.ones(7, device=dev)
        ai = torch.arange(na, device=dev, dtype=targets.dtype).view(na, 1).repeat(1, nt)
        targets = torch.cat((targets.repeat(na, 1, 1), ai[..., None]), 2)  # (na, nt, 7) with anchor index
        off = torch.tensor(_NEIGHBOUR_OFFSETS, device=dev, dtype=targets.dtype) * _CELL_BIAS

        for i in range(self.nl):
            anchors = self.anchors[i].to(dev, targets.dtype)
            shape = preds[i].shape
            gain[2:6] = torch.tensor(shape, device=dev)[[3, 2, 3, 2]].to(gain.dtype)
            t = targets * gain  # into grid units
            if nt:
                r = t[..., 4:6] / anchors[:, None]
                keep = torch.max(r, 1 / r).max(2)[0] < self.hyp["anchor_t"]
                t = t[keep]
                gxy = t[:, 2:4]
                gxi = gain[[2, 3]] - gxy
                left, up = ((gxy % 1 < _CELL_BIAS) & (gxy > 1)).T
                right, down = ((gxi % 1 < _CELL_BIAS) & (gxi > 1)).T
                sel = torch.stack((torch.ones_like(left), left, up, right, down))
                t = t.repeat((5, 1, 1))[sel]
                offsets = (torch.zeros_like(gxy)[None] + off[:, None])[sel]
            else:
                t = targets[0]
                offsets = 0

            bc, gxy, gwh, a = t.split((2, 2, 2, 1), 1)
            a, (b, c) = a.long().view(-1), bc.long().T
            gij = (gxy - offsets).long()
            gij[:, 0].clamp_(0, shape[3] - 1)  # clamped in place: the box offsets below use the clamped cell
            gij[:, 1].clamp_(0, shape[2] - 1)
            gi, gj = gij.T
            indices.append((b, a, gj, gi))
            tbox.append(torch.cat((gxy - gij, gwh), 1))
            anch.append(anchors[a])
            tcls.append(c)
        return tcls, tbox, indices, anch


ComputeLoss = YoloLoss


def objectness_balance(detect: nn.Module) -> list[float]:
    """Per-level objectness weights: YOLOv5's [4.0, 1.0, 0.4] for P3-P5 and [4.0, 1.0, 0.25, 0.06, 0.02] for
    P3-P7, looked up by each level's stride, so a head with a dropped level keeps its remaining levels' weights
    (P4-P5 get [1.0, 0.4], not P3's 4.0 and P4's 1.0)."""
    table = [4.0, 1.0, 0.4] if detect.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02]
    stride = getattr(detect, "stride", None)
    if stride is None or detect.nl == 3:
        return table[: max(detect.nl, 3)]
    if detect.nl < 3 and float(max(stride)) <= 32:
        table = [4.0, 1.0, 0.4]
    idx = [max(0, round(math.log2(float(s) / 8))) for s in stride]
    return [table[min(i, len(table) - 1)] for i in idx]


def _detect_head(model: nn.Module) -> nn.Module:
    """The Detect layer of a (possibly DDP-wrapped) model."""
    inner = model.module if hasattr(model, "module") else model
    head = inner.model[-1]
    if not all(hasattr(head, k) for k in ("anchors", "nc", "nl", "na")):
        raise TypeError(f"last layer {type(head).__name__} is not a Detect head")
    return head
