"""YOLOv5 loss: target assignment checked by hand, box/objectness/class terms, gradients."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from yolo.loss import YoloLoss, bbox_ciou, scale_loss_gains
from yolo.modules import Detect

HYP = {"box": 0.05, "obj": 1.0, "cls": 0.5, "cls_pw": 1.0, "obj_pw": 1.0, "anchor_t": 4.0, "fl_gamma": 0.0}
IMG = 64
STRIDES = (8, 16, 32)
# Pixel anchors far apart (ratio >= 5) so a target matches exactly the anchors the test says.
ANCHORS_PX = [[8, 8, 40, 40, 200, 200], [96, 96, 192, 192, 384, 384], [512, 512, 1024, 1024, 2048, 2048]]


class _Head(nn.Module):
    """Just a Detect layer in `.model`, as the loss expects of a DetectionModel."""

    def __init__(self, nc: int = 3):
        super().__init__()
        det = Detect(nc, ANCHORS_PX, ch=(4, 4, 4))
        det.stride = torch.tensor(STRIDES, dtype=torch.float32)
        det.anchors /= det.stride.view(-1, 1, 1)
        self.model = nn.Sequential(det)


def _preds(nc: int = 3, bs: int = 2, requires_grad: bool = False, fill: float = 0.0) -> list[torch.Tensor]:
    return [
        torch.full((bs, 3, IMG // s, IMG // s, nc + 5), fill, requires_grad=requires_grad) for s in STRIDES
    ]


def _target(img: int, cls: int, cx_px: float, cy_px: float, w_px: float, h_px: float) -> torch.Tensor:
    return torch.tensor([[img, cls, cx_px / IMG, cy_px / IMG, w_px / IMG, h_px / IMG]])


def test_assignment_by_hand():
    # 8x8 px box centred at (21, 43) px. Level 0 (stride 8): grid xy (2.625, 5.375), wh (1, 1) = anchor 0
    # exactly; anchor 1 is 5x larger (ratio 5 > 4). Other levels: every anchor ratio > 4.
    # Cells: own (2, 5); x fraction .625 -> the right neighbour (3, 5); y fraction .375 -> the one above (2, 4).
    loss = YoloLoss(_Head(), HYP)
    tcls, tbox, indices, anchors = loss.build_targets(_preds(), _target(1, 2, 21, 43, 8, 8))
    b, a, gj, gi = indices[0]
    assert len(b) == 3  # 3 cells for the one matching anchor
    assert b.tolist() == [1, 1, 1] and a.tolist() == [0, 0, 0] and tcls[0].tolist() == [2, 2, 2]
    cells = sorted(zip(gi.tolist(), gj.tolist()))
    assert cells == [(2, 4), (2, 5), (3, 5)]
    offsets = sorted(tuple(round(v, 4) for v in row) for row in tbox[0][:, :2].tolist())
    assert offsets == [(-0.375, 0.375), (0.625, 0.375), (0.625, 1.375)]
    assert torch.allclose(tbox[0][:, 2:], torch.ones(3, 2))
    assert torch.allclose(anchors[0], torch.ones(3, 2))
    assert len(indices[1][0]) == 0 and len(indices[2][0]) == 0


def test_two_matching_anchors_give_six_cells_and_edges_drop_neighbours():
    loss = YoloLoss(_Head(), HYP)
    # 20x20 px on level 0 is 2.5 grid cells: ratio 2.5 to anchor 0 (1x1) and 2 to anchor 1 (5x5) -> both match.
    _, _, indices, _ = loss.build_targets(_preds(), _target(0, 0, 21, 43, 20, 20))
    assert len(indices[0][0]) == 6
    assert sorted(indices[0][1].tolist()) == [0, 0, 0, 1, 1, 1]
    # centre in the first cell (grid x 0.375 < 1): no neighbour to the left, one below/above only if allowed.
    _, _, indices, _ = loss.build_targets(_preds(), _target(0, 0, 3, 3, 8, 8))
    assert len(indices[0][0]) == 1  # (0.375, 0.375): fraction < .5 but not > 1 -> no neighbours at all


def test_zero_targets_only_objectness():
    loss = YoloLoss(_Head(), HYP)
    total, items = loss(_preds(bs=2), torch.zeros(0, 6))
    lbox, lobj, lcls = items.tolist()
    assert lbox == 0 and lcls == 0 and lobj > 0
    # every cell has objectness target 0 and logit 0: BCE = ln 2 per level, times the balance [4, 1, 0.4]
    assert lobj == pytest.approx(math.log(2) * (4.0 + 1.0 + 0.4), rel=1e-5)
    assert total.item() == pytest.approx(2 * lobj, rel=1e-6)  # times batch size


def _logit(p: float) -> float:
    return math.log(p / (1 - p))


def test_perfect_box_has_no_box_loss_and_obj_target_is_iou():
    loss = YoloLoss(_Head(), HYP)
    targets = _target(0, 1, 21, 43, 8, 8)
    _, tbox, indices, anchors = loss.build_targets(_preds(bs=1), targets)
    preds = _preds(bs=1)
    b, a, gj, gi = indices[0]
    for k in range(len(b)):
        cell = preds[0][b[k], a[k], gj[k], gi[k]]
        tx, ty, tw, th = tbox[0][k].tolist()
        cell[0], cell[1] = _logit((tx + 0.5) / 2), _logit((ty + 0.5) / 2)  # xy = 2 * sigmoid - 0.5
        cell[2] = _logit(math.sqrt(tw / anchors[0][k, 0].item()) / 2)  # wh = (2 * sigmoid) ** 2 * anchor
        cell[3] = _logit(math.sqrt(th / anchors[0][k, 1].item()) / 2)
    _, items = loss(preds, targets)
    assert items[0].item() < 1e-6


def test_gradients_flow_only_where_assigned():
    loss = YoloLoss(_Head(), HYP)
    preds = _preds(bs=2, requires_grad=True)
    targets = torch.cat((_target(0, 2, 21, 43, 8, 8), _target(1, 0, 40, 20, 30, 30)))
    total, items = loss(preds, targets)
    total.backward()
    assert all(torch.isfinite(p.grad).all() for p in preds)
    assert items[0] > 0 and items[1] > 0 and items[2] > 0
    g0 = preds[0].grad
    mask = torch.zeros(g0.shape[:4], dtype=torch.bool)
    _, _, indices, _ = loss.build_targets(preds, targets)
    b, a, gj, gi = indices[0]
    mask[b, a, gj, gi] = True
    assert g0[mask][:, :4].abs().sum() > 0  # box channels learn at assigned cells
    assert g0[~mask][:, :4].abs().sum() == 0  # and nowhere else
    assert g0[~mask][:, 5:].abs().sum() == 0  # class channels likewise
    assert g0[~mask][:, 4].abs().sum() > 0  # objectness everywhere


def test_single_class_has_no_class_loss_and_smoothing_targets():
    loss = YoloLoss(_Head(nc=1), HYP)
    _, items = loss(_preds(nc=1, bs=1), _target(0, 0, 21, 43, 8, 8))
    assert items[2] == 0
    smooth = YoloLoss(_Head(), {**HYP, "label_smoothing": 0.1})
    assert (smooth.cp, smooth.cn) == pytest.approx((0.95, 0.05))


def test_focal_loss_reduces_easy_negatives():
    plain = YoloLoss(_Head(), HYP)
    focal = YoloLoss(_Head(), {**HYP, "fl_gamma": 1.5})
    preds = _preds(bs=1, fill=-4.0)  # confident "no object" everywhere
    _, a = plain(preds, torch.zeros(0, 6))
    _, b = focal(preds, torch.zeros(0, 6))
    assert 0 < b[1] < a[1] * 0.1


def test_ciou_identity_and_disjoint():
    box = torch.tensor([[5.0, 5.0, 2.0, 4.0]])
    assert bbox_ciou(box, box).item() == pytest.approx(1.0, abs=1e-6)
    far = torch.tensor([[20.0, 20.0, 2.0, 4.0]])
    assert bbox_ciou(box, far).item() < 0  # no overlap, centre-distance penalty


def test_gain_scaling_and_real_model():
    hyp = scale_loss_gains({**HYP, "box": 0.05, "cls": 0.5, "obj": 1.0}, nl=3, nc=3, imgsz=320)
    assert hyp["box"] == pytest.approx(0.05)
    assert hyp["cls"] == pytest.approx(0.5 * 3 / 80)
    assert hyp["obj"] == pytest.approx(0.25)
    from yolo.model import build_model

    cfg = {
        "nc": 3, "depth_multiple": 0.33, "width_multiple": 0.125,
        "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
        "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 1, "C3", [128]],
                     [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "Conv", [512, 3, 2]]],
        "head": [[[2, 3, 4], 1, "Detect", ["nc", "anchors"]]],
    }
    model = build_model(cfg).train()
    loss = YoloLoss(model, hyp)
    total, items = loss(model(torch.rand(2, 3, 64, 64)), torch.tensor([[0, 1, 0.5, 0.5, 0.3, 0.4]]))
    total.backward()
    assert items.shape == (3,) and torch.isfinite(total).all()
    assert model.model[0].conv.weight.grad.abs().sum() > 0
