"""`detect`: the official detect.py's boxes, labels in its format, bad input as one line per file."""

from __future__ import annotations

import argparse

import numpy as np
import pytest
from PIL import Image

from reports.cli import register
from reports.detect import DetectOptions, detect, yolo_label_lines
from reports.export import ExportError
from reports.imaging import resize_linear
from tests.test_export import tiny_model
from yolo.checkpoint import save_checkpoint


def parse(argv: list[str]):
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command", required=True))
    return ap.parse_args(argv)


def read_labels(path) -> np.ndarray:
    return np.array([[float(v) for v in line.split()] for line in path.read_text().splitlines()])


@pytest.mark.shared
@pytest.mark.parametrize("image", ["bus", "zidane"])
def test_detect_matches_official_detect_py(shared_dir, tmp_path, image):
    """Official `detect.py --weights yolov5n.pt --imgsz 640 --conf-thres 0.25 --save-txt --save-conf` (REFERENCE.md):
    every box within 1 px, same classes, confidences within 1e-3."""
    src = shared_dir / "reference" / f"{image}.jpg"
    opts = DetectOptions(imgsz=640, save_txt=True, save_conf=True)
    run = detect(shared_dir / "weights" / "yolov5n.pt", src, tmp_path / "exp", opts, log=lambda m: None)
    ours = read_labels(run.out / "labels" / f"{image}.txt")
    official = read_labels(shared_dir / "reference" / "official_detect_yolov5n_640" / f"{image}.txt")
    assert ours.shape == official.shape
    ours, official = ours[np.argsort(-ours[:, 5])], official[np.argsort(-official[:, 5])]
    with Image.open(src) as im:
        w, h = im.size
    assert (ours[:, 0] == official[:, 0]).all()
    scale = np.array([w, h, w, h])
    assert np.abs((ours[:, 1:5] - official[:, 1:5]) * scale).max() <= 1.0
    assert np.abs(ours[:, 5] - official[:, 5]).max() <= 1e-3


def test_resize_linear_matches_opencv_on_known_values():
    """Values from cv2.resize(img, (3, 2), interpolation=cv2.INTER_LINEAR), OpenCV 4.13 and 5.1 (Pillow's bilinear
    resize gives [[18, 81, 162], [97, 100, 109]]); real images were compared pixel by pixel when it was written."""
    img = np.array([[0, 50, 100, 200, 255], [10, 20, 30, 40, 50], [255, 0, 255, 0, 255]], np.uint8)
    assert resize_linear(img, (3, 2)).tolist() == [[16, 83, 189], [131, 199, 139]]
    assert resize_linear(img[:2, :4], (2, 1)).tolist() == [[20, 93]]  # an exact 2x shrink: the 2x2 means, rounded


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    return save_checkpoint(tmp_path_factory.mktemp("det") / "tiny.pt", tiny_model(), {"imgsz": 64})


@pytest.fixture
def images(tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(50, 70), (90, 60)]):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(src / f"im{i}.png")
    return src


def test_detect_skips_an_unreadable_image_and_counts_it(ckpt, images, tmp_path, capsys):
    (images / "broken.jpg").write_bytes(b"not a jpeg")
    args = parse(["detect", "--weights", str(ckpt), "--source", str(images), "--project", str(tmp_path / "runs"),
                  "--imgsz", "64", "--conf-thres", "0.001"])  # fmt: skip
    assert args.func(args) == 0
    out = capsys.readouterr().out
    assert "broken.jpg: unreadable image, skipped" in out
    assert "3 images, 1 unreadable" in out
    assert sorted(p.name for p in (tmp_path / "runs" / "exp").iterdir()) == ["im0.png", "im1.png"]


def test_detect_checks_imgsz_first_and_writes_nothing(ckpt, images, tmp_path):
    args = parse(["detect", "--weights", str(ckpt), "--source", str(images), "--project", str(tmp_path / "runs"),
                  "--imgsz", "65"])  # fmt: skip
    with pytest.raises(ExportError, match="--imgsz 65: 65 is not a multiple of the model's max stride 32"):
        args.func(args)
    assert not (tmp_path / "runs").exists()


def test_detect_increments_run_folders_unless_exist_ok(ckpt, images, tmp_path):
    base = ["detect", "--weights", str(ckpt), "--source", str(images), "--project", str(tmp_path / "r"), "--imgsz",
            "64", "--save-txt", "--conf-thres", "0.001"]  # fmt: skip
    for _ in range(2):
        args = parse(base)
        assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["exp", "exp2"]
    assert sorted(p.name for p in (tmp_path / "r" / "exp" / "labels").iterdir()) == ["im0.txt", "im1.txt"]
    args = parse([*base, "--exist-ok"])
    assert args.func(args) == 0
    assert sorted(p.name for p in (tmp_path / "r").iterdir()) == ["exp", "exp2"]


def test_label_lines_are_normalised_xywh():
    det = np.array([[10, 20, 30, 60, 0.5, 2]], np.float32)
    assert yolo_label_lines(det, (100, 200)) == ["2 0.1 0.4 0.1 0.4"]
    assert yolo_label_lines(det, (100, 200), with_conf=True) == ["2 0.1 0.4 0.1 0.4 0.5"]
