"""yolo.synthetic: deterministic files, accurate labels, and a data.yaml the loader accepts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from yolo.data import DetectionDataset, img2label_path, load_data_yaml
from yolo.synthetic import SYNTH_NAMES, make_synthetic_dataset


@pytest.fixture(scope="module")
def synth(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_synthetic_dataset(tmp_path_factory.mktemp("synth"), n_train=24, n_val=8, img_size=96, seed=1)


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_same_seed_same_bytes_other_seed_differs(tmp_path: Path) -> None:
    a = make_synthetic_dataset(tmp_path / "a", n_train=6, n_val=2, img_size=64, seed=7).parent
    b = make_synthetic_dataset(tmp_path / "b", n_train=6, n_val=2, img_size=64, seed=7).parent
    c = make_synthetic_dataset(tmp_path / "c", n_train=6, n_val=2, img_size=64, seed=8).parent
    fa, fb, fc = _files(a), _files(b), _files(c)
    assert len(fa) == 2 * 8 + 1 and fa == fb
    assert fa.keys() == fc.keys() and sum(fa[k] != fc[k] for k in fa) >= 15


def test_yaml_loads_and_dataset_is_clean(synth: Path) -> None:
    cfg = load_data_yaml(synth)
    assert cfg.root == synth.parent and cfg.names == SYNTH_NAMES and cfg.nc == 3
    assert len(cfg.train) == 24 and len(cfg.val) == 8
    ds = DetectionDataset(cfg.train, img_size=96, names=cfg.names)
    r = ds.report
    assert (r.skipped, r.clipped, r.duplicates, r.unreadable, r.missing) == (0, 0, 0, 0, 0)
    assert r.boxes >= 24
    assert {tuple(s) for s in ds.shapes} > {(96, 96)}  # some 4:3 / 3:4 images for rect batches
    assert {int(c) for lb in ds.labels for c in lb[:, 0]} == {0, 1, 2}


def test_boxes_sit_on_objects_and_respect_sizes(synth: Path) -> None:
    cfg = load_data_yaml(synth)
    contrasts = []
    for img_path in cfg.train + cfg.val:
        img = np.asarray(Image.open(img_path).convert("RGB")).astype(np.float32)
        h, w = img.shape[:2]
        for line in img2label_path(img_path).read_text().splitlines():
            cls, xc, yc, bw, bh = (float(v) for v in line.split())
            x_lo, x_hi, y_lo, y_hi = xc - bw / 2, xc + bw / 2, yc - bh / 2, yc + bh / 2
            assert cls in (0, 1, 2) and -1e-6 <= x_lo < x_hi <= 1 + 1e-6 and -1e-6 <= y_lo < y_hi <= 1 + 1e-6
            x0, y0 = round((xc - bw / 2) * w), round((yc - bh / 2) * h)
            x1, y1 = round((xc + bw / 2) * w), round((yc + bh / 2) * h)
            side = max(x1 - x0, y1 - y0)
            assert 0.5 * 0.15 * min(w, h) <= side <= 0.5 * min(w, h) + 1  # default min_frac/max_frac
            inside = img[y0:y1, x0:x1].reshape(-1, 3)
            ring = np.concatenate(
                [
                    img[max(y0 - 3, 0) : y0, x0:x1].reshape(-1, 3),
                    img[y1 : y1 + 3, x0:x1].reshape(-1, 3),
                    img[y0:y1, max(x0 - 3, 0) : x0].reshape(-1, 3),
                    img[y0:y1, x1 : x1 + 3].reshape(-1, 3),
                ]
            )
            if len(ring):
                contrasts.append(np.abs(inside.mean(0) - ring.mean(0)).sum())
    contrasts = np.array(contrasts)
    assert len(contrasts) >= 30
    assert (contrasts > 25).mean() >= 0.9  # the box interior differs clearly from what surrounds it


def test_tight_boxes_touch_the_shape_on_every_side(tmp_path: Path) -> None:
    """With one object per image, the shape's pixels reach each edge of its box and never beyond it."""
    y = make_synthetic_dataset(tmp_path, n_train=12, n_val=1, img_size=96, seed=3, min_objects=1, max_objects=1)
    for img_path in load_data_yaml(y).train:
        img = np.asarray(Image.open(img_path).convert("RGB")).astype(np.float32)
        h, w = img.shape[:2]
        _, xc, yc, bw, bh = (float(v) for v in img2label_path(img_path).read_text().split())
        x0, y0 = round((xc - bw / 2) * w), round((yc - bh / 2) * h)
        x1, y1 = round((xc + bw / 2) * w), round((yc + bh / 2) * h)
        centre = img[(y0 + y1) // 2 - 1 : (y0 + y1) // 2 + 2, (x0 + x1) // 2 - 1 : (x0 + x1) // 2 + 2]
        colour = np.median(centre.reshape(-1, 3), 0)  # circles, squares and triangles all cover their centre
        near = np.abs(img - colour).sum(-1) < 45
        edges = [near[y0:y1, x0], near[y0:y1, x1 - 1], near[y0, x0:x1], near[y1 - 1, x0:x1]]
        assert all(e.any() for e in edges), img_path
        outside = near.copy()
        outside[max(y0 - 1, 0) : y1 + 1, max(x0 - 1, 0) : x1 + 1] = False
        assert outside.mean() < 0.02  # the object's colour (almost) never appears outside its box


def test_rerun_replaces_old_files_and_rejects_bad_args(tmp_path: Path) -> None:
    make_synthetic_dataset(tmp_path, n_train=5, n_val=2, img_size=64)
    make_synthetic_dataset(tmp_path, n_train=3, n_val=1, img_size=64)
    assert len(list((tmp_path / "images" / "train").iterdir())) == 3
    assert len(list((tmp_path / "labels" / "val").iterdir())) == 1
    with pytest.raises(ValueError, match="min_frac"):
        make_synthetic_dataset(tmp_path, min_frac=0.6, max_frac=0.5)
