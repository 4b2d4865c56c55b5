"""YOLO-FastestV2's training loss: YOLOv5's anchor matching with the authors' differences (their utils/loss.py).

- anchors match a target when its width and height ratios stay within 2 (YOLOv5: `anchor_t`, 4);
- the box term is YOLOv5's (CIoU of 2 * sigmoid - 0.5 offsets and (2 * sigmoid)^2 * anchor sizes);
- objectness is BCE against 1.0 at every assigned (anchor, cell), not against the IoU;
- classes: softmax cross-entropy of the cell's one class vector (the head repeats it for each anchor, so any
  anchor's copy is the vector) against the target class, divided by the class count; counted once per assignment
  as theirs is;
- per-level objectness balance [1.0, 0.4] (strides 16, 32).

The gains are YOLOv5's, scaled as YOLOv5 scales them for the level count, the class count and the input size
(`yolo.loss.scale_loss_gains`), not the authors' fixed box 3.2, obj 64, cls 32 (tuned for COCO's 80 classes: for 2
classes their class term weighs about 20 times YOLOv5's). bench/results/fastestv2_training.md, helmets from the
ImageNet backbone, 300 un-augmented steps at batch 16, mAP50: the authors' gains 0.000 with SGD at lr0 0.01, 0.016
at 0.001, 0.297 with AdamW at 0.001; YOLOv5's scaled gains 0.238 with SGD at 0.01 and 0.451 with AdamW at 0.001,
the family's default (`FAMILY_HYP`, `FAMILY_OPTIMIZER`).

Returned like `YoloLoss`: (total * batch size, detached (box, obj, cls)), so the trainer treats both alike.

No gradient clipping (`max_grad_norm = None`), as the authors train: this network's gradient is about 25 times
YOLOv5n's at the same loss (189.6 against 7.6 on one batch of random init), so YOLOv5's clip at norm 10 cut its
steps about 20-fold for the first epochs.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from yolo.fastestv2 import FastestDetect
from yolo.hyp import load_hyp
from yolo.loss import YoloLoss, bbox_ciou, scale_loss_gains

ANCHOR_T = 2.0
# What this family trains with unless the user says otherwise (--optimizer, --hyp, hyp overrides): AdamW at lr0
# 0.001 (the authors' learning rate), biases warming up from 0 with the rest as the authors warm up every parameter.
# Measured on helmets from the ImageNet backbone, 300 un-augmented steps at batch 16 with this loss: AdamW at 0.001
# mAP50 0.451, SGD at 0.01 0.238 (module docstring).
FAMILY_OPTIMIZER = "AdamW"
FAMILY_HYP = {"lr0": 0.001, "warmup_bias_lr": 0.0}
BALANCE = (1.0, 0.4)


class FastestV2Loss(YoloLoss):
    """The loss of a model whose head is `yolo.fastestv2.FastestDetect`."""

    max_grad_norm = None  # the authors do not clip (module docstring)

    def __init__(self, model: nn.Module, hyp: Mapping | None = None):
        """`hyp`: box / obj / cls gains already scaled (`build_loss` scales them as YOLOv5 does); what it does not
        set is YOLOv5's default (yolo/hyps/default.yaml)."""
        super().__init__(model, {**load_hyp(None), **dict(hyp or {}), "anchor_t": ANCHOR_T, "fl_gamma": 0.0})
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
        lbox, lobj, lcls = lbox * self.hyp["box"], lobj * self.hyp["obj"], lcls * self.hyp["cls"]
        total = (lbox + lobj + lcls) * preds[0].shape[0]
        return total, torch.cat((lbox, lobj, lcls)).detach()


def _head(model: nn.Module) -> nn.Module:
    """The detection head of a model, DDP-wrapped or not."""
    return (model.module if hasattr(model, "module") else model).model[-1]


def family_hyp(model: nn.Module) -> dict[str, float]:
    """The hyperparameters the model's family trains with by default (empty for YOLOv5's own heads)."""
    return dict(FAMILY_HYP) if isinstance(_head(model), FastestDetect) else {}


def family_optimizer(model: nn.Module) -> str:
    """The optimizer the model's family trains with when --optimizer is not given."""
    return FAMILY_OPTIMIZER if isinstance(_head(model), FastestDetect) else "SGD"


def build_loss(model: nn.Module, hyp: Mapping, imgsz: int) -> YoloLoss:
    """The family's loss (FastestV2Loss for a FastestDetect head, else YOLOv5's), both with YOLOv5's scaled gains."""
    head = _head(model)
    scaled = scale_loss_gains(hyp, head.nl, head.nc, imgsz)
    return FastestV2Loss(model, scaled) if isinstance(head, FastestDetect) else YoloLoss(model, scaled)
