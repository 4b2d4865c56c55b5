"""YOLO-FastestV2's training loss: YOLOv5's anchor matching with the authors' differences (their utils/loss.py).

- anchors match a target when its width and height ratios stay within 2 (YOLOv5: `anchor_t`, 4);
- the box term is YOLOv5's (CIoU of 2 * sigmoid - 0.5 offsets and (2 * sigmoid)^2 * anchor sizes);
- objectness is BCE against 1.0 at every assigned (anchor, cell), not against the IoU;
- classes: softmax cross-entropy of the cell's one class vector (the head repeats it for each anchor, so any
  anchor's copy is the vector) against the target class, divided by the class count; counted once per assignment
  as theirs is;
- per-level objectness balance [1.0, 0.4] (strides 16, 32) and the authors' fixed gains box 3.2, obj 64, cls 32
  (the hyp file's box/obj/cls gains are YOLOv5's and are not used).

Returned like `YoloLoss`: (total * batch size / 64, detached (box, obj, cls) at the authors' gains), so the trainer
treats both alike. Why / 64: the authors' gains are YOLOv5's times 64 (box 0.05, obj 1.0, cls 0.5), and they train
with the batch mean at lr 0.001; this trainer sums over the batch (YOLOv5's `* bs`) at lr0 0.01, so the authors'
total as it was stepped 640 times the authors' step at the nominal batch of 64. On helmets that kept the class
term at chance and mAP50 near 0 for 10 epochs. Divided by 64, the step is YOLOv5's own for a loss of YOLOv5's
scale (ten times the authors', whose lr was set for COCO's 118k images).

No gradient clipping (`max_grad_norm = None`), as the authors train: this network's gradient is about 25 times
YOLOv5n's at the same loss (189.6 against 7.6 on one batch of random init), so YOLOv5's clip at norm 10 cut its
steps about 20-fold for the first epochs; one batch fitted its class term to 0.002 in 20 steps without the clip
and not in 60 with it, and 8 helmets epochs with it stayed at mAP50 < 0.001.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from yolo.fastestv2 import FastestDetect
from yolo.loss import YoloLoss, bbox_ciou, scale_loss_gains

ANCHOR_T = 2.0
# hyperparameters this family trains with unless the user's --hyp or overrides say otherwise, the authors' where
# YOLOv5's did not train it. Measured on helmets from the ImageNet backbone (batch 16, no augmentation, 80 SGD
# steps): at lr0 0.01 the class term diverged (26.8 -> 49.0 -> 40.2), at 0.003 and 0.001 it stayed near chance and
# fell slowly (17.1 -> 16.7 at 0.001); with YOLOv5's lr0 0.01 and bias warm-up from 0.1, 5 epochs of the trainer gave
# the same boxes for every image (mAP50 < 0.001). Biases warm up from 0 with the rest, as the authors warm up every
# parameter. Whether 90 epochs at these settings reach a useful mAP on a small dataset is not measured yet.
FAMILY_HYP = {"lr0": 0.001, "momentum": 0.949, "warmup_bias_lr": 0.0}
BALANCE = (1.0, 0.4)
GAINS = {"box": 3.2, "obj": 64.0, "cls": 32.0}
TO_YOLOV5_SCALE = 1 / 64  # the authors' gains over YOLOv5's (module docstring)


class FastestV2Loss(YoloLoss):
    """The loss of a model whose head is `yolo.fastestv2.FastestDetect`."""

    max_grad_norm = None  # the authors do not clip (module docstring)

    def __init__(self, model: nn.Module, hyp: Mapping | None = None):
        base = {"cls_pw": 1.0, "obj_pw": 1.0, "fl_gamma": 0.0}
        super().__init__(model, {**base, **dict(hyp or {}), **GAINS, "anchor_t": ANCHOR_T, "fl_gamma": 0.0})
        self.balance = list(BALANCE) + [BALANCE[-1]] * max(0, self.nl - len(BALANCE))

    def __call__(self, preds: Sequence[torch.Tensor], targets: torch.Tensor):
        zero = torch.zeros(1, device=self.device)
        lbox, lobj, lcls = zero.clone(), zero.clone(), zero.clone()
        tcls, tbox, indices, anchors = self.build_targets(preds, targets)
        for i, pi in enumerate(preds):
            b, a, gj, gi = indices[i]
            tobj = torch.zeros(pi.shape[:4], dtype=pi.dtype, device=pi.device)
            if b.shape[0]:
                pxy, pwh, _, pcls = pi[b, a, gj, gi].split((2, 2, 1, self.nc), 1)
                pbox = torch.cat((pxy.sigmoid() * 2 - 0.5, (pwh.sigmoid() * 2) ** 2 * anchors[i]), 1)
                lbox += (1.0 - bbox_ciou(pbox, tbox[i])).mean()
                tobj[b, a, gj, gi] = 1.0
                if self.nc > 1:
                    lcls += F.cross_entropy(pcls, tcls[i]) / self.nc
            lobj += F.binary_cross_entropy_with_logits(pi[..., 4], tobj) * self.balance[i]
        lbox, lobj, lcls = lbox * GAINS["box"], lobj * GAINS["obj"], lcls * GAINS["cls"]
        total = (lbox + lobj + lcls) * preds[0].shape[0] * TO_YOLOV5_SCALE
        return total, torch.cat((lbox, lobj, lcls)).detach()


def family_hyp(model: nn.Module) -> dict[str, float]:
    """The hyperparameters the model's family trains with by default (empty for YOLOv5's own heads)."""
    inner = model.module if hasattr(model, "module") else model
    return dict(FAMILY_HYP) if isinstance(inner.model[-1], FastestDetect) else {}


def build_loss(model: nn.Module, hyp: Mapping, imgsz: int) -> YoloLoss:
    """The family's loss: FastestV2Loss for a FastestDetect head, else YOLOv5's with its scaled gains."""
    inner = model.module if hasattr(model, "module") else model
    head = inner.model[-1]
    if isinstance(head, FastestDetect):
        return FastestV2Loss(model, hyp)
    return YoloLoss(model, scale_loss_gains(hyp, head.nl, head.nc, imgsz))
