"""YOLOv5-style and COCO metrics on hand-made detections, box helpers and the letterbox inverse."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from yolo.boxes import box_iou, clip_boxes, scale_boxes, xywh2xyxy, xywhn2xyxy, xyxy2xywh
from yolo.metrics import (
    IOU_THRESHOLDS,
    DetectionStats,
    ap_per_class,
    coco_evaluate,
    coco_gt_from_labels,
    image_id_from_path,
    match_predictions,
    predictions_to_coco,
)

NAMES = ["person", "car", "dog"]
# YOLOv5's 101-point interpolation reads the (recall 1, precision 0) sentinel at recall 1.0, so a perfect
# detector scores 1 - 0.5 / 100 instead of 1.0.
YOLO_PERFECT_AP = 0.995

# image id -> (m, 5) cls x1 y1 x2 y2 in pixels
LABELS = {
    1: np.array([[0, 10, 10, 60, 80], [1, 100, 50, 200, 120]], dtype=np.float64),
    2: np.array([[2, 30, 40, 90, 100]], dtype=np.float64),
    3: np.array([[0, 5, 5, 40, 40], [0, 200, 150, 260, 230], [1, 120, 20, 190, 90]], dtype=np.float64),
}
IMAGES = [{"id": i, "file_name": f"{i:012d}.jpg", "width": 320, "height": 240} for i in LABELS]


def detections_from_labels(labels: np.ndarray, shift: float = 0.0, conf: float = 0.9) -> torch.Tensor:
    """(n, 6) detections equal to the labels, optionally shifted right by `shift` pixels."""
    det = np.zeros((len(labels), 6))
    det[:, :4] = labels[:, 1:5]
    det[:, [0, 2]] += shift
    det[:, 4] = conf - 0.01 * np.arange(len(labels))
    det[:, 5] = labels[:, 0]
    return torch.tensor(det, dtype=torch.float32)


def evaluate(dets: dict[int, torch.Tensor]) -> tuple[dict, dict]:
    """(YOLOv5-style result, COCO result) for per-image detections against LABELS."""
    stats = DetectionStats()
    predictions = []
    for image_id, labels in LABELS.items():
        stats.add(dets[image_id], torch.tensor(labels, dtype=torch.float32))
        predictions += predictions_to_coco(dets[image_id], image_id)
    gt = coco_gt_from_labels(IMAGES, LABELS, NAMES)
    return stats.compute(NAMES), coco_evaluate(gt, predictions, NAMES)


def test_perfect_predictions(capsys: pytest.CaptureFixture[str]) -> None:
    yolo, coco = evaluate({i: detections_from_labels(lab) for i, lab in LABELS.items()})
    assert capsys.readouterr().out == ""  # COCOeval's prints are silenced by default
    assert coco["map"] == pytest.approx(1.0)
    assert coco["map50"] == pytest.approx(1.0)
    assert all(v == pytest.approx(1.0) for v in coco["ap"].values())
    assert set(coco["ap"]) == {0, 1, 2}
    assert yolo["precision"] == pytest.approx(1.0)
    assert yolo["recall"] == pytest.approx(1.0)
    assert yolo["map50"] == pytest.approx(YOLO_PERFECT_AP)
    assert yolo["map"] == pytest.approx(YOLO_PERFECT_AP)
    rows = {r["name"]: r for r in yolo["per_class"]}
    assert rows["person"]["instances"] == 3 and rows["person"]["images"] == 2
    assert rows["dog"]["instances"] == 1 and rows["dog"]["images"] == 1
    assert yolo["images"] == 3 and yolo["instances"] == 6


def test_shifted_boxes_keep_map50_but_lower_map() -> None:
    # A 10 px shift keeps IoU between 0.5 and 0.95 for every box here (smallest box is 35 px wide).
    dets = {i: detections_from_labels(lab, shift=10.0) for i, lab in LABELS.items()}
    ious = [box_iou(dets[i][:, :4], torch.tensor(lab[:, 1:5], dtype=torch.float32)).diag() for i, lab in LABELS.items()]
    assert all(((iou > 0.5) & (iou < 0.95)).all() for iou in ious)
    yolo, coco = evaluate(dets)
    assert coco["map50"] == pytest.approx(1.0)
    assert coco["map"] < 0.9
    assert yolo["map50"] == pytest.approx(YOLO_PERFECT_AP)
    assert yolo["map"] < 0.9


def test_missed_object_lowers_recall() -> None:
    dets = {i: detections_from_labels(lab) for i, lab in LABELS.items()}
    dets[3] = dets[3][1:]  # drop one of the three persons
    yolo, coco = evaluate(dets)
    person = next(r for r in yolo["per_class"] if r["name"] == "person")
    assert person["r"] == pytest.approx(2 / 3)
    assert person["p"] == pytest.approx(1.0)
    assert yolo["recall"] < 1.0
    assert coco["ap50"][0] == pytest.approx(2 / 3, abs=0.01)
    assert coco["ap50"][1] == pytest.approx(1.0)


def test_false_positive_lowers_precision() -> None:
    dets = {i: detections_from_labels(lab) for i, lab in LABELS.items()}
    extra = torch.tensor([[250.0, 10.0, 300.0, 60.0, 0.95, 2.0]])  # confident dog where there is none
    dets[1] = torch.cat((extra, dets[1]))
    yolo, coco = evaluate(dets)
    dog = next(r for r in yolo["per_class"] if r["name"] == "dog")
    assert dog["p"] < 1.0
    assert coco["ap"][2] < 1.0 and coco["ap"][0] == pytest.approx(1.0)


def test_empty_predictions() -> None:
    yolo, coco = evaluate({i: torch.zeros((0, 6)) for i in LABELS})
    assert coco["map"] == 0.0 and coco["map50"] == 0.0
    assert yolo["map"] == 0.0 and yolo["precision"] == 0.0 and yolo["recall"] == 0.0
    assert DetectionStats().compute(NAMES)["map50"] == 0.0


def test_match_predictions_one_detection_per_label() -> None:
    labels = torch.tensor([[0, 0, 0, 10, 10]], dtype=torch.float32)
    dets = torch.tensor(
        [
            [0, 0, 10, 10, 0.9, 0],  # exact
            [0, 0, 10, 9, 0.8, 0],  # duplicate, IoU 0.9
            [0, 0, 10, 10, 0.7, 1],  # exact box, wrong class
        ]
    )
    correct = match_predictions(dets, labels, IOU_THRESHOLDS)
    assert correct.shape == (3, 10) and correct.dtype == torch.bool
    assert correct[0].all()
    assert not correct[1].any()
    assert not correct[2].any()


def test_match_predictions_one_label_per_detection() -> None:
    labels = torch.tensor([[0, 0, 0, 10, 10], [0, 0, 0, 10, 9]], dtype=torch.float32)  # IoU 0.9 apart
    dets = torch.tensor([[0, 0, 10, 10, 0.9, 0]])
    correct = match_predictions(dets, labels, IOU_THRESHOLDS)
    assert correct[0].all()  # matched to the exact label; the second label stays unmatched
    correct = match_predictions(dets, labels[1:], IOU_THRESHOLDS)
    assert correct[0].tolist() == [t <= 0.9 + 1e-6 for t in IOU_THRESHOLDS.tolist()]


def test_match_predictions_two_detections_two_labels() -> None:
    labels = torch.tensor([[0, 0, 0, 10, 10], [0, 20, 0, 30, 10]], dtype=torch.float32)
    dets = torch.tensor([[20, 0, 30, 10, 0.9, 0], [0, 0, 10, 10, 0.8, 0]])
    assert match_predictions(dets, labels, IOU_THRESHOLDS).all()
    assert match_predictions(dets[:0], labels, IOU_THRESHOLDS).shape == (0, 10)
    assert not match_predictions(dets, labels[:0], IOU_THRESHOLDS).any()


def test_ap_per_class_shapes_and_order() -> None:
    tp = np.array([[True] * 10, [False] * 10, [True] * 10])
    res = ap_per_class(tp, np.array([0.9, 0.8, 0.7]), np.array([0, 0, 1]), np.array([0, 1, 1]))
    assert res["classes"].tolist() == [0, 1]
    assert res["ap"].shape == (2, 10)
    assert res["ap50"][0] == pytest.approx(YOLO_PERFECT_AP)
    # class 1: one of two found at precision 1; YOLOv5 interpolates linearly to the (1, 0) sentinel
    assert res["ap50"][1] == pytest.approx(0.75)
    assert res["r"].tolist() == pytest.approx([1.0, 0.5])


def test_scale_boxes_inverts_letterbox() -> None:
    h0, w0, size = 300, 500, 320
    gain = min(size / h0, size / w0)
    padw, padh = (size - w0 * gain) / 2, (size - h0 * gain) / 2
    original = torch.tensor([[10.0, 20.0, 110.0, 220.0], [400.0, 0.0, 500.0, 300.0]])
    letterboxed = original * gain + torch.tensor([padw, padh, padw, padh])
    recovered = scale_boxes((size, size), letterboxed.clone(), (h0, w0))
    assert torch.allclose(recovered, original, atol=1e-4)
    ratio_pad = ((gain, gain), (padw, padh))
    recovered = scale_boxes((size, size), letterboxed.clone(), (h0, w0), ratio_pad=ratio_pad)
    assert torch.allclose(recovered, original, atol=1e-4)
    outside = scale_boxes((size, size), torch.tensor([[-5.0, 0.0, 330.0, 330.0]]), (h0, w0))
    assert outside.tolist() == [[0.0, 0.0, float(w0), float(h0)]]


def test_box_conversions_roundtrip() -> None:
    xywh = np.array([[50.0, 40.0, 20.0, 10.0]])
    xyxy = xywh2xyxy(xywh)
    assert xyxy.tolist() == [[40.0, 35.0, 60.0, 45.0]]
    assert np.allclose(xyxy2xywh(xyxy), xywh) and xywh.tolist() == [[50.0, 40.0, 20.0, 10.0]]
    t = torch.tensor(xywh)
    assert torch.allclose(xyxy2xywh(xywh2xyxy(t)), t)
    norm = np.array([[0.5, 0.5, 0.2, 0.4]])
    assert np.allclose(xywhn2xyxy(norm, 100, 50, padw=3, padh=4), [[43.0, 19.0, 63.0, 39.0]])
    boxes = np.array([[-3.0, 2.0, 120.0, 70.0]])
    assert clip_boxes(boxes, (50, 100)).tolist() == [[0.0, 2.0, 100.0, 50.0]]


def test_predictions_to_coco_rounding() -> None:
    det = torch.tensor([[10.12345, 20.0, 30.5, 60.0, 0.123456789, 2.0]], dtype=torch.float64)
    (row,) = predictions_to_coco(det, 42)
    assert row["image_id"] == 42 and row["category_id"] == 2
    assert row["bbox"] == [10.123, 20.0, 20.377, 40.0]
    assert row["score"] == 0.12346


def test_coco_gt_from_labels_layout() -> None:
    gt = coco_gt_from_labels(IMAGES, LABELS, NAMES)
    assert [a["id"] for a in gt["annotations"]] == list(range(1, 7))
    first = gt["annotations"][0]
    assert first["bbox"] == [10.0, 10.0, 50.0, 70.0] and first["area"] == 3500.0 and first["iscrowd"] == 0
    assert [c["id"] for c in gt["categories"]] == [0, 1, 2]


def test_image_id_from_path() -> None:
    assert image_id_from_path("data/images/000000000139.jpg") == 139
    assert image_id_from_path("/x/y/img_7.png") == "img_7"


def _stats(dets: dict[int, torch.Tensor]) -> DetectionStats:
    stats = DetectionStats()
    for image_id, labels in LABELS.items():
        stats.add(dets[image_id], torch.tensor(labels, dtype=torch.float32))
    return stats


def test_resampled_stats_repeat_and_drop_images() -> None:
    perfect = _stats({i: detections_from_labels(lab) for i, lab in LABELS.items()})
    assert perfect.resampled(range(perfect.images)).compute(NAMES) == perfect.compute(NAMES)
    twice_first = perfect.resampled([0, 0])
    assert twice_first.images == 2
    assert twice_first.compute(NAMES)["instances"] == 2 * len(LABELS[1])


def test_paired_bootstrap_of_a_gap_and_of_no_gap() -> None:
    from yolo.metrics import paired_bootstrap

    good = _stats({i: detections_from_labels(lab) for i, lab in LABELS.items()})
    blind = {i: detections_from_labels(lab) for i, lab in LABELS.items()}
    blind[3] = torch.zeros((0, 6))  # misses every object of image 3
    worse = _stats(blind)
    same = paired_bootstrap(good, good, NAMES, rounds=50)
    assert same["difference"] == 0.0 and same["sd"] == 0.0 and same["ci95"] == [0.0, 0.0]
    assert same["sd_a"] == same["sd_b"] > 0  # one model's own score still moves between draws
    gap = paired_bootstrap(good, worse, NAMES, rounds=200, seed=1)
    assert gap["difference"] > 0.1 and gap["sd"] > 0
    assert gap["ci95"][0] <= gap["difference"] <= gap["ci95"][1]
    assert gap["ci95"][0] == pytest.approx(0.0, abs=1e-9)  # draws without image 3 show no gap at all
    assert paired_bootstrap(good, worse, NAMES, rounds=200, seed=1) == gap  # seeded
    with pytest.raises(ValueError, match="same images"):
        paired_bootstrap(good, good.resampled([0, 1]), NAMES)
