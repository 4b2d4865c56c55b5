"""Knowledge distillation while fine-tuning a pruned model: the unpruned model teaches the student.

Labels alone have to re-teach a pruned network everything the removed channels carried; the unpruned model's
own outputs say, for every cell and anchor, what the network used to predict, including the near misses and
the background the labels are silent about. The teacher runs (no gradient) on the same augmented batch as the
student, and the student is pulled towards its raw per-level maps, objectness-scaled as in Mehta & Ozturk
(2018), "Object detection at 200 frames per second":

    obj  KL(sigmoid(t_obj) || sigmoid(s_obj)), mean over every cell, levels balanced like the label loss
    cls  KL(sigmoid(t_cls) || sigmoid(s_cls)), mean over classes, averaged over cells weighted by sigmoid(t_obj)
         (a YOLO-FastestV2 head: KL(softmax(t_cls) || softmax(s_cls)), its one class vector per cell)
    box  squared error of the decoded box, xy = 2 sigmoid - 0.5 (cells) and wh = (2 sigmoid)^2 (student
         anchors), averaged over cells weighted by sigmoid(t_obj)

Teacher and student heads must be of one kind with the same levels, anchors and classes: a yolov5 teacher for a
YOLO-FastestV2 student is refused in one line (different levels, anchors and class activations leave no
anchor-for-anchor pairs to compare); its own unpruned model can teach a pruned YOLO-FastestV2.

KL is BCE with the teacher's probability as soft target minus that target's entropy: the same gradient as BCE,
but 0 when the student matches the teacher, so the logged value reads as "distance to the teacher". Weighting
the class and box terms by the teacher's objectness keeps the thousands of background cells, whose boxes and
classes mean nothing, from drowning the few that hold objects.

Feature imitation (hyp `distill_feat`, default 0 = off): the student's Detect inputs (the neck's outputs, one map
a level) are pulled towards the teacher's by their squared error, each level's divided by the teacher map's mean
square (a relative error, so levels and widths weigh alike). This is "mimicking then replacing" (Wang et al. 2022,
"Compressing Models with Few Samples: Mimicking then Replacing"): with little data, matching the features that the
unpruned head reads is a denser signal than its few output maps, and the head the features feed is the trained
one. It needs the Detect inputs unpruned (prune with `--ignore 'model.24.m.*'`, the Detect's own convs).

Gains: hyp `distill` (total, `--distill-weight`) times `distill_obj`, `distill_cls`, `distill_box`, the last
three scaled with image size, level count and class count exactly as the label gains (`scale_loss_gains`), so
the two losses keep their proportion at any `--imgsz`; `distill_feat` is not scaled (it is already relative).
The sum is multiplied by the batch size like the label loss.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Optional, Union

import torch
import torch.nn.functional as F
from torch import nn

from yolo.checkpoint import load_model
from yolo.fastestv2 import FastestDetect
from yolo.loss import scale_loss_gains
from yolo.model import detect_convs_pattern

LOSS_NAME = "train/distill_loss"


class TeacherError(ValueError):
    """A --teacher that cannot teach this student; the message is one line naming the flag."""


def _bare(model: nn.Module) -> nn.Module:
    return model.module if hasattr(model, "module") else model


def _detect(model: nn.Module) -> nn.Module:
    return _bare(model).model[-1]


def load_teacher(path: Union[str, Path], device: Union[str, torch.device] = "cpu") -> nn.Module:
    """The teacher as a frozen fp32 model in eval mode (BatchNorm running statistics, no dropout)."""
    try:
        model, _meta = load_model(path, device=device)
    except (ValueError, OSError) as e:
        raise TeacherError(f"--teacher {path}: {' '.join(str(e).split())}") from None
    model.float().eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


def check_compatible(teacher: nn.Module, student: nn.Module, name: str = "") -> None:
    """Raise TeacherError unless both models predict the same maps: classes, levels, anchors per level, strides."""
    t, s = _detect(teacher), _detect(student)
    what = name or "the teacher"
    if type(t) is not type(s):
        raise TeacherError(f"--teacher {what}: {_head_mismatch(t, s)}")
    checks = (
        ("classes (nc)", t.nc, s.nc),
        ("Detect levels", t.nl, s.nl),
        ("anchors per level", t.na, s.na),
        ("strides", [float(x) for x in t.stride], [float(x) for x in s.stride]),
    )
    for label, tv, sv in checks:
        if tv != sv:
            raise TeacherError(f"--teacher {what}: {label} differ, teacher {tv} vs student {sv}")


def _head_mismatch(t: nn.Module, s: nn.Module) -> str:
    """Why a head of another kind cannot teach: the maps are compared anchor by anchor, cell by cell."""
    def desc(d: nn.Module) -> str:
        cls = "one softmax class vector per cell" if isinstance(d, FastestDetect) else "sigmoid classes per anchor"
        return f"{d.nl} levels (strides {'/'.join(str(int(x)) for x in d.stride)}), its own anchors, {cls}"

    return (f"a {type(t).__name__} teacher cannot teach a {type(s).__name__} student: distillation compares their "
            f"raw maps anchor for anchor, and the student's head has {desc(s)} where the teacher's has {desc(t)} "
            "(use a teacher of the student's family, e.g. the unpruned model, or train without --teacher)")


def check_same_detect_inputs(teacher: nn.Module, student: nn.Module, name: str = "") -> None:
    """Feature imitation compares the Detect inputs channel for channel: a pruned student must have kept them."""
    t, s = ([c.in_channels for c in _detect(m).m] for m in (teacher, student))
    if t != s:
        keep = detect_convs_pattern(student)
        raise TeacherError(
            f"--teacher {name or 'the teacher'}: feature imitation (hyp distill_feat > 0) needs the student's Detect "
            f"inputs unpruned, teacher {t} vs student {s} channels (prune with --ignore '{keep}')"
        )


def _keep_inputs(store: dict, role: str):
    """A Detect pre-hook keeping its input maps under store[role]; a plain closure, so copying the model (the EMA)
    copies a hook that writes to the same store instead of copying the Distiller and its teacher."""

    def hook(module, args):
        store[role] = list(args[0])

    return hook


class Distiller:
    """A trainer loss hook: `hook(trainer, imgs, targets, preds)` returns the distillation loss times batch size.

    `last_item` holds the last unscaled (per-image) value for the results column `loss_name`.
    """

    loss_name = LOSS_NAME

    def __init__(
        self,
        teacher: nn.Module,
        student: nn.Module,
        hyp: Mapping[str, float],
        imgsz: int,
        balance: Sequence[float] | None = None,
        name: str = "",
    ):
        check_compatible(teacher, student, name)
        self.teacher = teacher
        d = _detect(student)
        self.nl, self.nc = d.nl, d.nc
        self.softmax_cls = isinstance(d, FastestDetect)  # one softmax class vector per cell (YOLO-FastestV2)
        gains = scale_loss_gains(
            {"obj": hyp["distill_obj"], "cls": hyp["distill_cls"], "box": hyp["distill_box"]}, d.nl, d.nc, imgsz
        )
        total = float(hyp["distill"])
        self.gains = {k: total * float(v) for k, v in gains.items()}
        self.enabled = total > 0
        if balance is None:
            balance = [4.0, 1.0, 0.4] if d.nl == 3 else [4.0, 1.0, 0.25, 0.06, 0.02]
        self.balance = list(balance)
        # teacher wh in student-anchor units: (2 sigmoid)^2 * anchor_t / anchor_s (1 when the anchors agree)
        ratio = _detect(teacher).anchors.float() / d.anchors.float()
        self.anchor_ratio = [r.view(1, -1, 1, 1, 2) for r in ratio]
        self.feat_gain = total * float(hyp.get("distill_feat", 0.0))
        self.features: dict[str, list[torch.Tensor]] = {}
        if self.feat_gain > 0:
            check_same_detect_inputs(teacher, student, name)
            for role, model in (("teacher", teacher), ("student", student)):
                _detect(model).register_forward_pre_hook(_keep_inputs(self.features, role))
        self.last_item = torch.zeros(1)

    @classmethod
    def from_weights(
        cls,
        path: Union[str, Path],
        student: nn.Module,
        hyp: Mapping[str, float],
        imgsz: int,
        device: Union[str, torch.device] = "cpu",
        balance: Sequence[float] | None = None,
    ) -> Distiller:
        """Load `path` (official YOLOv5 .pt or ours) onto `device` and check it against `student`."""
        return cls(load_teacher(path, device), student, hyp, imgsz, balance, name=str(path))

    @torch.no_grad()
    def teacher_outputs(self, imgs: torch.Tensor) -> list[torch.Tensor]:
        """Raw per-level maps (bs, na, ny, nx, 5 + nc) of the teacher, as Detect returns them in training mode."""
        self.teacher.eval()
        head = _detect(self.teacher)
        head.training = True  # raw maps, no decode; Detect holds no BatchNorm, the rest stays in eval mode
        try:
            return [x.detach() for x in self.teacher(imgs)]
        finally:
            head.training = False

    def loss(
        self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """(gained total, detached (obj, cls, box) before the gains), per image, from raw per-level maps."""
        device = student[0].device
        lobj, lcls, lbox = (torch.zeros((), device=device) for _ in range(3))
        for i, (s, t) in enumerate(zip(student, teacher)):
            s, t = s.float(), t.float()
            q = t.sigmoid()
            w = q[..., 4]  # teacher objectness: where there is something to learn about classes and boxes
            wsum = w.sum().clamp_min(1e-6)
            lobj = lobj + binary_kl(s[..., 4], t[..., 4], q[..., 4]).mean() * self.balance[i]
            kl_cls = (softmax_kl if self.softmax_cls else binary_kl)(s[..., 5:], t[..., 5:], q[..., 5:]).mean(-1)
            lcls = lcls + (kl_cls * w).sum() / wsum
            ps = s[..., :4].sigmoid()
            sb = torch.cat((ps[..., :2] * 2 - 0.5, (ps[..., 2:4] * 2) ** 2), -1)
            tb = torch.cat((q[..., :2] * 2 - 0.5, (q[..., 2:4] * 2) ** 2 * self.anchor_ratio[i].to(device)), -1)
            lbox = lbox + ((sb - tb) ** 2).mean(-1).mul(w).sum() / wsum
        g = self.gains
        total = g["obj"] * lobj + g["cls"] * lcls + g["box"] * lbox
        return total, torch.stack((lobj, lcls, lbox)).detach()

    def feature_loss(self, student: Sequence[torch.Tensor], teacher: Sequence[torch.Tensor]) -> torch.Tensor:
        """Mean over levels of |s - t|^2 / mean(t^2), each a mean over the batch, channels and cells."""
        terms = [F.mse_loss(s.float(), t.float()) / t.float().pow(2).mean().clamp_min(1e-12)
                 for s, t in zip(student, teacher)]
        return torch.stack(terms).mean()

    def __call__(
        self, trainer: Any, imgs: torch.Tensor, targets: torch.Tensor, preds: Sequence[torch.Tensor]
    ) -> Optional[torch.Tensor]:
        if not self.enabled:
            self.last_item = torch.zeros(1)
            return None
        total, _items = self.loss(preds, self.teacher_outputs(imgs))
        if self.feat_gain > 0:
            total = total + self.feat_gain * self.feature_loss(self.features["student"], self.features["teacher"])
        self.last_item = total.detach().reshape(1).cpu()
        return total * imgs.shape[0]


def softmax_kl(s_logit: torch.Tensor, t_logit: torch.Tensor, _q: torch.Tensor) -> torch.Tensor:
    """KL(softmax(t) || softmax(s)) over the last axis, repeated along it (its mean is the KL), so it takes
    binary_kl's place in the class term."""
    logp_t, logp_s = F.log_softmax(t_logit, -1), F.log_softmax(s_logit, -1)
    return (logp_t.exp() * (logp_t - logp_s)).sum(-1, keepdim=True).expand_as(s_logit)


def binary_kl(s_logit: torch.Tensor, t_logit: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
    """Elementwise KL(Bernoulli(q) || Bernoulli(sigmoid(s))) with q = sigmoid(t): BCE(s, q) - H(q)."""
    return F.binary_cross_entropy_with_logits(s_logit, q, reduction="none") - F.binary_cross_entropy_with_logits(
        t_logit, q, reduction="none"
    )
