"""Greedy NMS against a brute-force reference, and YOLOv5 post-processing semantics."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo.boxes import xywh2xyxy
from yolo.nms import MAX_WH, nms, non_max_suppression


def reference_nms(boxes: torch.Tensor, scores: torch.Tensor, iou_thres: float) -> list[int]:
    """Textbook greedy NMS: visit boxes by score, keep one unless a kept box overlaps it by > iou_thres.

    IoU is computed in float32 like torchvision's kernel and compared with the threshold in double.
    """
    b = boxes.numpy().astype(np.float32)
    order = np.argsort(-scores.numpy(), kind="stable")
    areas = (b[:, 2] - b[:, 0]) * (b[:, 3] - b[:, 1])
    suppressed = np.zeros(len(b), dtype=bool)
    keep = []
    for i in order:
        if suppressed[i]:
            continue
        keep.append(int(i))
        w = np.clip(np.minimum(b[i, 2], b[:, 2]) - np.maximum(b[i, 0], b[:, 0]), 0, None)
        h = np.clip(np.minimum(b[i, 3], b[:, 3]) - np.maximum(b[i, 1], b[:, 1]), 0, None)
        inter = w * h
        iou = inter / (areas[i] + areas - inter)
        suppressed |= iou.astype(np.float64) > iou_thres
    return keep


def random_boxes(n: int, seed: int, size: float = 100.0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    xy = torch.rand(n, 2, generator=g) * size
    wh = torch.rand(n, 2, generator=g) * size / 2 + 2
    return torch.cat((xy, xy + wh), 1), torch.rand(n, generator=g)


def make_prediction(boxes_xywh: list[list[float]], obj: list[float], cls: list[list[float]]) -> torch.Tensor:
    """One-image (1, n, 5+nc) decoded prediction tensor."""
    rows = [b + [o] + c for b, o, c in zip(boxes_xywh, obj, cls)]
    return torch.tensor([rows], dtype=torch.float32)


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
@pytest.mark.parametrize("iou_thres", [0.3, 0.45, 0.7])
def test_nms_matches_reference(seed: int, iou_thres: float) -> None:
    boxes, scores = random_boxes(300, seed)
    assert nms(boxes, scores, iou_thres).tolist() == reference_nms(boxes, scores, iou_thres)


@pytest.mark.parametrize("seed", [10, 11])
def test_nms_matches_reference_across_blocks(seed: int) -> None:
    boxes, scores = random_boxes(1500, seed, size=400.0)  # several 512-box blocks, many kept boxes
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == reference_nms(boxes, scores, 0.5)
    assert len(keep) > 600


def test_nms_long_suppression_chain() -> None:
    # Each box overlaps its successor by IoU 0.6 and the one after by 1/3: greedy keeps every other box,
    # which needs the within-block resolution to propagate through the whole chain.
    n = 600
    x = torch.arange(n, dtype=torch.float32) * 2.5
    boxes = torch.stack((x, torch.zeros(n), x + 10, torch.full((n,), 10.0)), 1)
    scores = torch.linspace(1, 0.1, n)
    keep = nms(boxes, scores, 0.5)
    assert keep.tolist() == list(range(0, n, 2))
    assert keep.tolist() == reference_nms(boxes, scores, 0.5)


def test_nms_threshold_is_strict() -> None:
    boxes = torch.tensor([[0.0, 0.0, 2.0, 1.0], [0.0, 0.0, 1.0, 1.0]])  # IoU exactly 0.5
    scores = torch.tensor([0.9, 0.8])
    assert nms(boxes, scores, 0.5).tolist() == [0, 1]
    assert nms(boxes, scores, 0.49).tolist() == [0]


def test_nms_max_keep_is_prefix() -> None:
    boxes, scores = random_boxes(800, 5, size=300.0)
    full = nms(boxes, scores, 0.45)
    assert nms(boxes, scores, 0.45, max_keep=17).tolist() == full[:17].tolist()
    assert nms(boxes, scores, 0.45, max_keep=0).numel() == 0


def test_nms_empty() -> None:
    keep = nms(torch.zeros((0, 4)), torch.zeros(0), 0.5)
    assert keep.shape == (0,) and keep.dtype == torch.long


def test_non_max_suppression_matches_per_class_reference() -> None:
    g = torch.Generator().manual_seed(7)
    n, nc = 400, 3
    pred = torch.zeros(1, n, 5 + nc)
    pred[0, :, :2] = torch.rand(n, 2, generator=g) * 200
    pred[0, :, 2:4] = torch.rand(n, 2, generator=g) * 60 + 5
    pred[0, :, 4] = torch.rand(n, generator=g)
    pred[0, :, 5:] = torch.rand(n, nc, generator=g)
    out = non_max_suppression(pred, conf_thres=0.1, iou_thres=0.5, max_det=1000)[0]

    x = pred[0]
    conf, cls = (x[:, 5:] * x[:, 4:5]).max(1)
    valid = (x[:, 4] > 0.1) & (conf > 0.1)
    boxes = xywh2xyxy(x[:, :4])
    expected = []
    for c in range(nc):
        idx = torch.nonzero(valid & (cls == c)).flatten()
        expected += [(float(conf[idx[k]]), c) for k in reference_nms(boxes[idx], conf[idx], 0.5)]
    expected.sort(reverse=True)
    assert [(float(s), int(c)) for s, c in out[:, 4:6].tolist()] == expected
    assert torch.all(out[:-1, 4] >= out[1:, 4])


def test_class_aware_vs_agnostic() -> None:
    boxes = [[50.0, 50.0, 20.0, 20.0], [51.0, 50.0, 20.0, 20.0]]  # IoU ~0.9
    pred = make_prediction(boxes, [0.9, 0.8], [[1.0, 0.0], [0.0, 1.0]])
    aware = non_max_suppression(pred, 0.25, 0.45)[0]
    agnostic = non_max_suppression(pred, 0.25, 0.45, agnostic=True)[0]
    assert aware[:, 5].tolist() == [0.0, 1.0]
    assert agnostic[:, 5].tolist() == [0.0]
    assert torch.allclose(aware[0, :4], torch.tensor([40.0, 40.0, 60.0, 60.0]))
    assert MAX_WH == 7680


def test_multi_label_keeps_every_class_above_threshold() -> None:
    pred = make_prediction([[50.0, 50.0, 20.0, 20.0]], [0.8], [[0.9, 0.5, 0.2]])
    single = non_max_suppression(pred, 0.3, 0.45)[0]
    multi = non_max_suppression(pred, 0.3, 0.45, multi_label=True)[0]
    assert single[:, 5].tolist() == [0.0]
    assert multi[:, 5].tolist() == [0.0, 1.0]  # 0.8 * 0.2 = 0.16 < 0.3 is dropped
    assert multi[:, 4].tolist() == pytest.approx([0.72, 0.4])


def test_conf_filter_and_classes() -> None:
    boxes = [[10.0, 10.0, 5.0, 5.0], [40.0, 40.0, 5.0, 5.0], [80.0, 80.0, 5.0, 5.0]]
    # obj below threshold; obj above but obj*cls below; a good class-1 box
    pred = make_prediction(boxes, [0.2, 0.9, 0.9], [[1.0, 0.0], [0.3, 0.0], [0.0, 0.9]])
    out = non_max_suppression(pred, 0.3, 0.45)[0]
    assert out[:, 5].tolist() == [1.0]
    assert out[0, 4].item() == pytest.approx(0.81)
    assert non_max_suppression(pred, 0.3, 0.45, classes=[0])[0].shape == (0, 6)
    assert non_max_suppression(pred, 0.3, 0.45, classes=[1])[0].shape == (1, 6)


def test_max_det_truncation() -> None:
    n = 50
    boxes = [[20.0 * i + 10, 10.0, 8.0, 8.0] for i in range(n)]  # disjoint
    obj = torch.linspace(0.99, 0.5, n).tolist()
    pred = make_prediction(boxes, obj, [[1.0]] * n)
    out = non_max_suppression(pred, 0.25, 0.45, max_det=7)[0]
    assert out.shape == (7, 6)
    assert out[:, 4].tolist() == pytest.approx(obj[:7])


def test_empty_inputs() -> None:
    out = non_max_suppression(torch.zeros(2, 0, 85))
    assert len(out) == 2 and all(o.shape == (0, 6) for o in out)
    out = non_max_suppression(torch.zeros(1, 10, 85))  # nothing above conf_thres
    assert out[0].shape == (0, 6)
    pred = make_prediction([[5.0, 5.0, 2.0, 2.0]], [0.9], [[0.9]])
    assert non_max_suppression((pred, [torch.zeros(1)]))[0].shape == (1, 6)  # eval-mode (pred, feats) tuple


def test_does_not_modify_input() -> None:
    pred = make_prediction([[5.0, 5.0, 2.0, 2.0]], [0.9], [[0.5, 0.9]])
    before = pred.clone()
    non_max_suppression(pred, 0.1, 0.5, multi_label=True)
    assert torch.equal(pred, before)


def test_many_boxes_runs() -> None:
    g = torch.Generator().manual_seed(0)
    n, nc = 5000, 80
    pred = torch.zeros(2, n, 5 + nc)
    pred[..., :2] = torch.rand(2, n, 2, generator=g) * 640
    pred[..., 2:4] = torch.rand(2, n, 2, generator=g) * 100 + 5
    pred[..., 4] = torch.rand(2, n, generator=g) * 0.7 + 0.3
    pred[..., 5:] = torch.rand(2, n, nc, generator=g)
    out = non_max_suppression(pred, 0.25, 0.45, max_det=300)
    assert [o.shape for o in out] == [(300, 6), (300, 6)]
    boxes, scores = random_boxes(5000, 1, size=640.0)
    assert nms(boxes, scores, 0.45).tolist() == reference_nms(boxes, scores, 0.45)
