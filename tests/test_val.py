"""yolo.val: the score must not depend on the batch size (exact rectangular batches)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

from tests.zoo import tiny_official
from yolo.model import build_model
from yolo.synthetic import make_synthetic_dataset
from yolo.val import evaluate


def _predictions(model, data: Path, tmp: Path, batch: int, mode: str) -> dict:
    out = tmp / f"{mode}-{batch}.json"
    evaluate(model, data, imgsz=96, batch_size=batch, rect_batches=mode, save_json=out, workers=0, progress=False)
    rows: dict = {}
    for r in json.loads(out.read_text()):
        rows.setdefault(r["image_id"], []).append([r["category_id"], r["score"], *r["bbox"]])
    return {k: np.array(sorted(v)) for k, v in rows.items()}


def _same(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(a[k].shape == b[k].shape and np.allclose(a[k], b[k], atol=1e-3) for k in a)


def test_exact_rect_batches_score_every_batch_size_as_batch_one(tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = make_synthetic_dataset(tmp_path / "data", n_train=1, n_val=12, img_size=96, seed=3)
    model = build_model(tiny_official("yolov5n", width=0.125)).eval()
    one = _predictions(model, data, tmp_path, 1, "exact")
    assert sum(len(v) for v in one.values()) > 50  # an untrained head still predicts plenty at conf 0.001
    assert _same(one, _predictions(model, data, tmp_path, 4, "exact"))
    assert not _same(one, _predictions(model, data, tmp_path, 12, "yolov5"))  # official grouping pads more


def test_evaluate_hands_its_per_image_matches_to_the_caller(tmp_path: Path) -> None:
    from yolo.metrics import DetectionStats

    torch.manual_seed(0)
    data = make_synthetic_dataset(tmp_path / "data", n_train=1, n_val=6, img_size=96, seed=4)
    model = build_model(tiny_official("yolov5n", width=0.125)).eval()
    stats = DetectionStats()
    res = evaluate(model, data, imgsz=96, batch_size=2, workers=0, progress=False, stats=stats)
    assert stats.images == 6
    again = stats.compute(model.names)
    assert again["map50"] == res["yolo_map50"] and again["instances"] == res["instances"]
    # 96 px images hold no object of COCO's large size (96^2 px), and some small ones
    sizes = res["map_by_size"]
    assert sizes["large"] is None and sizes["small"] is not None and 0.0 <= sizes["small"] <= 1.0
