"""yolo.data: data.yaml resolution, label checking, image loading, letterbox, rect batches, augmentation."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from yolo.data import (
    DataConfig,
    DataError,
    DetectionDataset,
    create_dataloader,
    image_size,
    img2label_path,
    letterbox,
    load_data_yaml,
    load_image,
    read_label_file,
)

RED = (255, 0, 0)
GREEN_BG = (40, 160, 40)


# ----------------------------------------------------------------------------------------------- helpers
def _image(path: Path, size: tuple[int, int] = (64, 48), color=GREEN_BG) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).save(path)
    return path


def _labelled(root: Path, name: str, size: tuple[int, int], rows: list[str], split: str = "train") -> Path:
    img = _image(root / "images" / split / f"{name}.png", size)
    lb = img2label_path(img)
    lb.parent.mkdir(parents=True, exist_ok=True)
    lb.write_text("".join(r + "\n" for r in rows))
    return img


def _red_box_image(root: Path, name: str, size: tuple[int, int], box: tuple[int, int, int, int]) -> Path:
    """An image with one solid red rectangle (pixel xyxy, end exclusive) labelled exactly."""
    w, h = size
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:] = GREEN_BG
    x0, y0, x1, y1 = box
    arr[y0:y1, x0:x1] = RED
    img = root / "images" / "train" / f"{name}.png"
    img.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(img)
    lb = img2label_path(img)
    lb.parent.mkdir(parents=True, exist_ok=True)
    lb.write_text(f"0 {(x0 + x1) / 2 / w} {(y0 + y1) / 2 / h} {(x1 - x0) / w} {(y1 - y0) / h}\n")
    return img


def _write_yaml(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def _pixel_boxes(labels: torch.Tensor, h: int, w: int) -> np.ndarray:
    lb = labels.numpy()
    return np.stack(
        [
            (lb[:, 2] - lb[:, 4] / 2) * w,
            (lb[:, 3] - lb[:, 5] / 2) * h,
            (lb[:, 2] + lb[:, 4] / 2) * w,
            (lb[:, 3] + lb[:, 5] / 2) * h,
        ],
        1,
    )


# --------------------------------------------------------------------------------------------- data.yaml
@pytest.fixture()
def two_splits(tmp_path: Path) -> Path:
    for i in range(3):
        _image(tmp_path / "ds" / "images" / "train" / f"t{i}.png")
    _image(tmp_path / "ds" / "images" / "train" / "sub" / "deep.jpg")
    _image(tmp_path / "ds" / "images" / "val" / "v0.png")
    (tmp_path / "ds" / "images" / "train" / "notes.txt").write_text("not an image")
    return tmp_path / "ds"


def test_yaml_folders_and_names_list(two_splits: Path) -> None:
    y = _write_yaml(two_splits / "data.yaml", "path: .\ntrain: images/train\nval: images/val\nnames: [a, b]\n")
    cfg = load_data_yaml(y)
    assert isinstance(cfg, DataConfig)
    assert cfg.root == two_splits and cfg.nc == 2 and cfg.names == ["a", "b"]
    assert {p.name for p in cfg.train} == {"t0.png", "t1.png", "t2.png", "deep.jpg"}  # recursive, images only
    assert [p.name for p in cfg.val] == ["v0.png"]
    assert all(p.is_absolute() for p in cfg.train)


def test_yaml_missing_path_means_yaml_folder(two_splits: Path) -> None:
    y = _write_yaml(two_splits / "data.yaml", "train: images/train\nval: images/val\nnames: [a]\n")
    assert load_data_yaml(y).root == two_splits


def test_yaml_relative_path_resolved_against_yaml_not_cwd(two_splits: Path, tmp_path: Path, monkeypatch) -> None:
    y = _write_yaml(tmp_path / "cfg" / "d.yaml", "path: ../ds\ntrain: images/train\nval: images/val\nnames: [a]\n")
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    cfg = load_data_yaml(os.path.relpath(y, elsewhere))
    assert cfg.root == two_splits
    assert len(cfg.train) == 4


def test_yaml_txt_list_relative_rules(two_splits: Path) -> None:
    lists = two_splits / "lists"
    lists.mkdir()
    (lists / "extra").mkdir()
    _image(lists / "extra" / "x.png")
    absolute = two_splits / "images" / "train" / "t2.png"
    (lists / "train.txt").write_text(f"./extra/x.png\nimages/train/t0.png\n\n{absolute}\n")
    y = _write_yaml(two_splits / "data.yaml", "path: .\ntrain: lists/train.txt\nval: images/val\nnames: [a]\n")
    cfg = load_data_yaml(y)
    assert cfg.train == sorted([lists / "extra" / "x.png", two_splits / "images/train/t0.png", absolute], key=str)


def test_yaml_txt_list_missing_image_names_line(two_splits: Path) -> None:
    (two_splits / "train.txt").write_text("images/train/t0.png\nimages/train/gone.png\n")
    y = _write_yaml(two_splits / "data.yaml", "train: train.txt\nval: images/val\nnames: [a]\n")
    with pytest.raises(DataError, match=r"train\.txt:2: .*gone\.png"):
        load_data_yaml(y)


def test_yaml_list_of_folders_and_names_dict(two_splits: Path) -> None:
    y = _write_yaml(
        two_splits / "data.yaml",
        "path: .\ntrain: [images/train, images/val]\nval: images/val\nnames:\n  1: dog\n  0: cat\nnc: 2\n",
    )
    cfg = load_data_yaml(y)
    assert cfg.names == ["cat", "dog"]
    assert len(cfg.train) == 5


def test_yaml_nc_mismatch(two_splits: Path) -> None:
    y = _write_yaml(two_splits / "data.yaml", "train: images/train\nval: images/val\nnames: [a, b]\nnc: 3\n")
    with pytest.raises(DataError, match="nc is 3 but names lists 2"):
        load_data_yaml(y)


def test_yaml_missing_folder_names_path(two_splits: Path) -> None:
    y = _write_yaml(two_splits / "data.yaml", "train: images/train\nval: images/nope\nnames: [a]\n")
    with pytest.raises(DataError) as e:
        load_data_yaml(y)
    msg = str(e.value)
    assert "\n" not in msg and str(y) in msg and str(two_splits / "images" / "nope") in msg


def test_yaml_malformed_and_empty_split(two_splits: Path) -> None:
    bad = _write_yaml(two_splits / "bad.yaml", "train: [images/train\nval: x\n")
    with pytest.raises(DataError, match=r"bad\.yaml:\d+: malformed yaml"):
        load_data_yaml(bad)
    (two_splits / "empty").mkdir()
    y = _write_yaml(two_splits / "e.yaml", "train: empty\nval: images/val\nnames: [a]\n")
    with pytest.raises(DataError, match="no images"):
        load_data_yaml(y)
    with pytest.raises(DataError, match="not found"):
        load_data_yaml(two_splits / "missing.yaml")


def test_img2label_path_uses_last_images_folder() -> None:
    p = Path("/d/images/x/images/a.b.jpg")
    assert img2label_path(p) == Path("/d/images/x/labels/a.b.txt")


# ------------------------------------------------------------------------------------------------ labels
GOOD = "0 0.5 0.5 0.2 0.2"


@pytest.mark.parametrize(
    ("row", "reason"),
    [
        ("0 0.5 0.5 0.2", "wrong column count 4"),
        ("0 0.5 0.5 0.2 0.2 0.9", "wrong column count 6"),
        ("0 0.5 abc 0.2 0.2", "non-numeric value 'abc'"),
        ("0 0.5 nan 0.2 0.2", "non-numeric"),
        ("3 0.5 0.5 0.2 0.2", "class 3 is not an integer in [0, 3)"),
        ("1.5 0.5 0.5 0.2 0.2", "class 1.5 is not an integer"),
        ("-1 0.5 0.5 0.2 0.2", "class -1 is not an integer"),
        ("0 313.3 74.0 102.1 116.0", "far outside"),
        ("0 0.5 0.5 0.0 0.2", "zero or negative box size"),
        ("0 0.5 0.5 0.2 -0.1", "zero or negative box size"),
        ("0 1.02 0.5 0.02 0.2", "zero or negative box size after clipping"),
    ],
)
def test_bad_label_rows_are_skipped_with_file_line_reason(tmp_path: Path, row: str, reason: str) -> None:
    f = tmp_path / "a.txt"
    f.write_text(f"{GOOD}\n{row}\n")
    labels, issues, counts = read_label_file(f, nc=3)
    assert labels.shape == (1, 5) and labels.dtype == np.float32
    np.testing.assert_allclose(labels[0], [0, 0.5, 0.5, 0.2, 0.2])
    assert len(issues) == 1
    assert (issues[0].file, issues[0].line, issues[0].action) == (f, 2, "skipped")
    assert reason in issues[0].reason
    assert counts["skipped"] == 1 and counts["clipped"] == 0


def test_slight_overshoot_is_clipped_and_counted(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("\n1 0.02 0.5 0.08 0.2\n0 0.5 0.5 0.2 0.2000001\n")  # line 3: rounding noise, not reported
    labels, issues, counts = read_label_file(f, nc=2)
    np.testing.assert_allclose(labels[0], [1, 0.03, 0.5, 0.06, 0.2], atol=1e-6)
    assert counts["clipped"] == 1 and counts["skipped"] == 0
    assert [(i.line, i.action) for i in issues] == [(2, "clipped")]
    assert "overshoots the image edge by 0.02" in issues[0].reason
    assert labels[:, 1:].min() >= 0 and (labels[:, 1:3] + labels[:, 3:5] / 2).max() <= 1


def test_polygon_row_becomes_its_bounding_box(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text("2 0.1 0.2 0.4 0.2 0.3 0.6\n")
    labels, issues, counts = read_label_file(f, nc=3)
    np.testing.assert_allclose(labels, [[2, 0.25, 0.4, 0.3, 0.4]], atol=1e-6)
    assert issues == [] and counts["polygons"] == 1


def test_duplicate_rows_dropped_and_reported(tmp_path: Path) -> None:
    f = tmp_path / "a.txt"
    f.write_text(f"{GOOD}\n1 0.2 0.2 0.1 0.1\n0 0.50 0.5 0.2 0.2\n")
    labels, issues, counts = read_label_file(f, nc=2)
    assert len(labels) == 2 and counts["duplicates"] == 1
    assert [(i.file, i.line, i.action, i.reason) for i in issues] == [(f, 3, "duplicate", "exact duplicate of line 1")]


def test_dataset_report_counts_backgrounds_and_unreadable(tmp_path: Path) -> None:
    a = _labelled(tmp_path, "a", (64, 48), [GOOD, GOOD, "0 0.02 0.5 0.08 0.2", "5 0.5 0.5 0.1 0.1"])
    b = _labelled(tmp_path, "b", (64, 48), [])
    c = _image(tmp_path / "images" / "train" / "c.png")
    bad = tmp_path / "images" / "train" / "bad.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n not really")
    ds = DetectionDataset([a, b, c, bad], img_size=64, names=["x", "y"])
    r = ds.report
    assert (r.images, r.boxes, r.clipped, r.skipped, r.duplicates) == (3, 2, 1, 1, 1)
    assert (r.missing, r.empty, r.unreadable) == (1, 1, 1)
    assert [Path(p) for p in ds.im_files] == [a, b, c]
    unreadable = [i for i in r.issues if i.action == "unreadable"]
    assert unreadable[0].file == bad and str(bad) in unreadable[0].reason
    assert "\n" not in r.summary() and "3 images" in r.summary()
    assert not list(tmp_path.rglob("*.cache"))


# ------------------------------------------------------------------------------------------------ images
def test_exif_rotated_image_loaded_upright(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), np.uint8)
    arr[:, :20] = RED  # stored: red left half, blue right half
    arr[:, 20:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6  # display rotated 90 degrees clockwise: the left half ends up on top
    path = tmp_path / "images" / "r.jpg"
    path.parent.mkdir()
    Image.fromarray(arr).save(path, quality=95, exif=exif)
    assert image_size(path) == (20, 40)
    img, (h0, w0), (h, w) = load_image(path, 40)
    assert (h0, w0) == (40, 20) and img.shape == (40, 20, 3) and img.dtype == np.uint8
    assert img[5, 10, 0] > 200 and img[5, 10, 2] < 60  # top is red
    assert img[35, 10, 2] > 200 and img[35, 10, 0] < 60  # bottom is blue
    small, _, (h2, w2) = load_image(path, 20)
    assert (h2, w2) == (20, 10) and small.shape == (20, 10, 3)


def test_unreadable_image_error_names_file(tmp_path: Path) -> None:
    p = tmp_path / "x.jpg"
    p.write_bytes(b"garbage")
    with pytest.raises(DataError, match="x.jpg: unreadable image"):
        load_image(p, 64)


def test_letterbox_shapes_and_padding() -> None:
    img = np.full((50, 100, 3), 7, np.uint8)
    out, ratio, (dw, dh) = letterbox(img, 64)
    assert out.shape == (64, 64, 3) and ratio == (0.64, 0.64) and (dw, dh) == (0, 16)
    assert (out[:16] == 114).all() and (out[-16:] == 114).all() and (out[16:48] == 7).all()

    odd = np.full((45, 100, 3), 7, np.uint8)  # 29 px tall after resize: 35 px of padding, 17 top, 18 bottom
    out, _, (dw, dh) = letterbox(odd, 64)
    assert out.shape == (64, 64, 3) and dh == 17.5
    assert (out[:17] == 114).all() and (out[17] == 7).all() and (out[-18:] == 114).all() and (out[-19] == 7).all()

    out, _, (dw, dh) = letterbox(odd, 64, auto=True, stride=32)
    assert out.shape == (32, 64, 3) and dh == 1.5

    out, ratio, (dw, dh) = letterbox(np.zeros((10, 20, 3), np.uint8), (32, 64), scaleup=False)
    assert out.shape == (32, 64, 3) and ratio == (1.0, 1.0) and (dw, dh) == (22.0, 11.0)


# -------------------------------------------------------------------------------------------- rect batches
def test_rect_batches_share_stride_multiple_shapes_and_map_back(tmp_path: Path) -> None:
    sizes = [(64, 48), (48, 64), (64, 64), (64, 32), (40, 64), (64, 40), (60, 50)]
    files = [_red_box_image(tmp_path, f"i{k}", s, (4, 6, 20, 30)) for k, s in enumerate(sizes)]
    ds = DetectionDataset(files, img_size=64, names=["r"], rect=True, batch_size=3, stride=32, pad=0.5)
    ar = ds.shapes[:, 1] / ds.shapes[:, 0]
    assert (np.diff(ar) >= 0).all()  # sorted by h / w
    assert (ds.batch_shapes % 32 == 0).all() and ds.batch_shapes.shape == (3, 2)
    for bi in range(3):
        items = [ds[i] for i in np.flatnonzero(ds.batch == bi)]
        assert {tuple(it[0].shape) for it in items} == {(3, *map(int, ds.batch_shapes[bi]))}
    for img, labels, path, ((h0, w0), ((gh, gw), (padw, padh))) in (ds[i] for i in range(len(ds))):
        h, w = img.shape[1:]
        box = _pixel_boxes(labels, h, w)[0]
        orig = [(box[0] - padw) / gw, (box[1] - padh) / gh, (box[2] - padw) / gw, (box[3] - padh) / gh]
        np.testing.assert_allclose(orig, [4, 6, 20, 30], atol=0.05)
        assert (w0, h0) == tuple(ds.shapes[ds.im_files.index(Path(path))])


def test_exact_rect_batches_hold_one_shape_each_and_pad_as_batch_one(tmp_path: Path) -> None:
    sizes = [(64, 48), (48, 64), (64, 64), (64, 32), (64, 48), (40, 64), (64, 40), (64, 48), (60, 50)]
    files = [_red_box_image(tmp_path, f"i{k}", s, (4, 6, 20, 30)) for k, s in enumerate(sizes)]
    alone = DetectionDataset(files, img_size=64, names=["r"], rect=True, batch_size=1, stride=32, pad=0.5)
    own = {p: tuple(alone.batch_shapes[alone.batch[i]]) for i, p in enumerate(alone.im_files)}
    loader, ds = create_dataloader(files, 64, 2, rect=True, pad=0.5, stride=32, workers=0, rect_batches="exact")
    batches = [(imgs.shape, paths) for imgs, _, paths, _ in loader]
    assert sorted(p for _, paths in batches for p in paths) == sorted(str(f) for f in files)  # each image once
    assert all(len(paths) <= 2 for _, paths in batches)
    for shape, paths in batches:  # one shape per batch, and it is the image's own batch-1 shape
        assert {own[Path(p)] for p in paths} == {tuple(shape[2:])}
    assert len(batches) < len(files)  # images of the same shape do share batches
    with pytest.raises(ValueError, match="rect_batches"):
        DetectionDataset(files, img_size=64, rect=True, rect_batches="square")


def test_rect_loader_never_shuffles(tmp_path: Path) -> None:
    files = [_image(tmp_path / "images" / f"{k}.png", (64, 32 + 4 * k)) for k in range(6)]
    loader, ds = create_dataloader(files, 64, 2, rect=True, shuffle=True, workers=0)
    seen = [p for _, _, paths, _ in loader for p in paths]
    assert seen == [str(p) for p in ds.im_files]


# ------------------------------------------------------------------------------------------- augmentation
HYP = {
    "mosaic": 1.0,
    "degrees": 10.0,
    "translate": 0.1,
    "scale": 0.5,
    "shear": 2.0,
    "perspective": 0.0005,
    "fliplr": 0.5,
    "flipud": 0.5,
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.0,
    "mixup": 0.0,
}


@pytest.fixture()
def red_boxes(tmp_path: Path) -> list[Path]:
    sizes = [(96, 72), (80, 80), (64, 96), (96, 96)]
    boxes = [(10, 8, 40, 30), (30, 30, 70, 60), (5, 50, 35, 90), (50, 10, 90, 40)]
    return [_red_box_image(tmp_path, f"b{k}", s, b) for k, (s, b) in enumerate(zip(sizes, boxes))]


def _red_mask(img: torch.Tensor) -> np.ndarray:
    a = img.permute(1, 2, 0).numpy().astype(int)
    return (a[..., 0] > 200) & (a[..., 1] < 60) & (a[..., 2] < 60)


@pytest.mark.parametrize("hyp", [HYP, {**HYP, "mosaic": 0.0, "perspective": 0.0}])
def test_augmentation_keeps_boxes_on_their_objects(red_boxes: list[Path], hyp: dict) -> None:
    ds = DetectionDataset(red_boxes, img_size=96, names=["r"], augment=True, hyp=hyp)
    assert ds.mosaic
    n_boxes = n_red = n_unlabelled = 0
    for seed in range(40):
        img, labels, _, _ = ds.get(seed % len(ds), np.random.default_rng(seed))
        assert img.dtype == torch.uint8 and img.shape == (3, 96, 96)
        assert labels.shape[1] == 6 and (labels[:, 0] == 0).all() and (labels[:, 1] == 0).all()
        assert (labels[:, 2:] >= 0).all() and (labels[:, 2:] <= 1).all()
        boxes = _pixel_boxes(labels, 96, 96)
        assert (boxes[:, :2] >= -1e-3).all() and (boxes[:, 2:] <= 96 + 1e-3).all()
        red = _red_mask(img)
        covered = np.zeros_like(red)
        for x0, y0, x1, y1 in boxes:
            inside = red[int(y0) : int(np.ceil(y1)), int(x0) : int(np.ceil(x1))]
            assert inside.mean() > 0.2  # the box sits on its (warped) red rectangle
            covered[max(int(y0) - 1, 0) : int(np.ceil(y1)) + 1, max(int(x0) - 1, 0) : int(np.ceil(x1)) + 1] = True
        # unlabelled red is only a sliver cut off at the crop edge (dropped like YOLOv5's box_candidates)
        ys, xs = np.nonzero(red & ~covered)
        assert (np.minimum(np.minimum(ys, 95 - ys), np.minimum(xs, 95 - xs)) < 12).all()
        n_boxes += len(boxes)
        n_red += red.sum()
        n_unlabelled += len(ys)
    assert n_boxes >= 12 and n_unlabelled < 0.05 * n_red


def test_mosaic_switch_and_hsv_mixup_run(red_boxes: list[Path]) -> None:
    hyp = {**HYP, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "mixup": 1.0}
    ds = DetectionDataset(red_boxes, img_size=64, names=["r"], augment=True, hyp=hyp)
    img, labels, _, shapes = ds.get(0, np.random.default_rng(1))
    assert img.shape == (3, 64, 64) and shapes[0] == (64, 64)
    ds.mosaic = False
    img, labels, _, ((h0, w0), _) = ds.get(0, np.random.default_rng(1))
    assert img.shape == (3, 64, 64) and (h0, w0) == (72, 96)


def test_no_augmentation_when_hyp_keys_missing(red_boxes: list[Path]) -> None:
    plain = DetectionDataset(red_boxes, img_size=96, names=["r"], augment=False)
    aug = DetectionDataset(red_boxes, img_size=96, names=["r"], augment=True, hyp={})
    for i in range(len(plain)):
        a, b = plain.get(i, np.random.default_rng(0)), aug.get(i, np.random.default_rng(0))
        assert torch.equal(a[0], b[0]) and torch.allclose(a[1], b[1])


def test_memory_cache_gives_the_same_samples_and_stays_untouched(red_boxes: list[Path]) -> None:
    hyp = {**HYP, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4, "mixup": 0.5, "mosaic": 0.5}
    disk = DetectionDataset(red_boxes, img_size=64, names=["r"], augment=True, hyp=hyp, cache="no")
    ram = DetectionDataset(red_boxes, img_size=64, names=["r"], augment=True, hyp=hyp, cache="ram")
    assert disk._cached is None and ram._cached is not None
    assert ram.cache_bytes() == sum(img.nbytes for img, _, _ in ram._cached)
    for seed in range(12):
        a, b = disk.get(seed % 4, np.random.default_rng(seed)), ram.get(seed % 4, np.random.default_rng(seed))
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) and a[3] == b[3]
    for i, f in enumerate(ram.im_files):
        img, hw0, hw = ram.image(i)
        fresh = load_image(f, 64)
        assert np.array_equal(img, fresh[0]) and (hw0, hw) == fresh[1:]
        with pytest.raises(ValueError):
            img[0, 0, 0] = 1  # read-only: augmentation can never edit the cached copy


def test_cache_is_one_buffer_that_loader_processes_share(red_boxes: list[Path]) -> None:
    from multiprocessing.reduction import ForkingPickler

    ram = DetectionDataset(red_boxes, img_size=64, names=["r"], cache="ram")
    assert ram._cached.pixels.numel() == ram.cache_bytes()  # every image in the one buffer, nothing more
    assert not ram._cached.pixels.is_shared()
    # what a spawned loader worker (macOS, Windows) receives: the buffer moves to shared memory, not a copy
    blob = ForkingPickler.dumps(ram)
    assert ram._cached.pixels.is_shared() and len(blob) < ram.cache_bytes() // 4
    copy = ForkingPickler.loads(blob)
    for i in range(len(ram)):
        a, b = ram.image(i), copy.image(i)
        assert np.array_equal(a[0], b[0]) and a[1:] == b[1:]


def test_spawned_loader_workers_read_the_cache_right(red_boxes: list[Path]) -> None:
    ram = DetectionDataset(red_boxes, img_size=64, names=["r"], cache="ram")
    disk = DetectionDataset(red_boxes, img_size=64, names=["r"], cache="no")
    loader = torch.utils.data.DataLoader(ram, batch_size=2, num_workers=1, multiprocessing_context="spawn",
                                         collate_fn=DetectionDataset.collate_fn)  # fmt: skip
    seen = [b[0] for b in loader]
    assert ram._cached.pixels.is_shared()
    expected = [DetectionDataset.collate_fn([disk[i] for i in (k, k + 1)])[0] for k in (0, 2)]
    assert all(torch.equal(a, b) for a, b in zip(seen, expected, strict=True))


@pytest.mark.parametrize("method, shared", [("fork", False), ("spawn", True), ("forkserver", True)])
def test_loader_shares_the_cache_before_non_forked_workers_start(red_boxes, monkeypatch, method, shared) -> None:
    import yolo.data.loader as loader

    monkeypatch.setattr(loader, "worker_start_method", lambda: method)
    _, ds = create_dataloader(red_boxes, 64, 2, names=["r"], workers=1, cache="ram")
    assert ds._cached.pixels.is_shared() is shared  # forked workers share its pages anyway


def test_a_cache_too_big_for_shared_memory_is_one_clear_line(red_boxes, monkeypatch) -> None:
    import yolo.data.loader as loader

    def full(self):
        raise RuntimeError("unable to write to file </torch_1_2>: No space left on device (28)\nmore detail")

    monkeypatch.setattr(loader, "worker_start_method", lambda: "spawn")
    monkeypatch.setattr(torch.Tensor, "share_memory_", full)
    with pytest.raises(DataError, match=r"^--cache ram: the 0 MB image cache does not fit in shared memory .*"
                                        r"No space left on device \(28\)\); use --workers 0") as e:  # fmt: skip
        create_dataloader(red_boxes, 64, 2, names=["r"], workers=1, cache="ram")
    assert "\n" not in str(e.value)


def test_packed_images_refuse_a_wrong_size() -> None:
    from yolo.data import PackedImages

    img = np.zeros((4, 5, 3), np.uint8)
    with pytest.raises(ValueError, match="60 bytes, 61 were reserved"):
        PackedImages([(img, (8, 10), (4, 5))], 61)
    with pytest.raises(ValueError, match="more than the 59 bytes"):
        PackedImages([(img, (8, 10), (4, 5))], 59)


def test_auto_cache_only_within_the_memory_limit(red_boxes: list[Path], monkeypatch) -> None:
    import yolo.data.dataset as dataset

    monkeypatch.setattr(dataset, "auto_cache_limit", lambda: 0)
    assert DetectionDataset(red_boxes, img_size=64, names=["r"])._cached is None
    need = DetectionDataset(red_boxes, img_size=64, names=["r"], cache="no").cache_bytes()
    monkeypatch.setattr(dataset, "auto_cache_limit", lambda: need)
    assert DetectionDataset(red_boxes, img_size=64, names=["r"])._cached is not None
    loader, ds = create_dataloader(red_boxes, 64, 2, names=["r"], workers=0)
    assert ds._cached is not None  # no workers to hide the decoding: cached
    loader, ds = create_dataloader(red_boxes, 64, 2, names=["r"], workers=1)
    assert ds._cached is None  # workers decode in the background: 'auto' reads from disk
    with pytest.raises(ValueError, match="cache: expected one of auto, ram, no"):
        DetectionDataset(red_boxes, img_size=64, names=["r"], cache="disk")


# ----------------------------------------------------------------------------------------------- loaders
def test_collate_writes_batch_index_and_pads_mixed_sizes() -> None:
    def item(h: int, w: int, n: int) -> tuple:
        img = torch.zeros((3, h, w), dtype=torch.uint8)
        lb = torch.zeros((n, 6))
        lb[:, 1:] = torch.tensor([1, 0.5, 0.5, 0.5, 0.5])
        return img, lb, f"p{h}", ((h, w), ((1.0, 1.0), (0.0, 0.0)))

    imgs, targets, paths, shapes = DetectionDataset.collate_fn([item(32, 64, 2), item(32, 64, 0), item(64, 64, 1)])
    assert imgs.shape == (3, 3, 64, 64)
    assert targets[:, 0].tolist() == [0, 0, 2]
    assert paths == ("p32", "p32", "p64") and len(shapes) == 3
    np.testing.assert_allclose(targets[0, 2:].numpy(), [0.5, 0.25, 0.5, 0.25])  # same pixels, taller image
    assert (imgs[0, :, 32:] == 114).all()


def test_distributed_sampler_splits_disjointly(tmp_path: Path) -> None:
    files = [_image(tmp_path / "images" / f"{k}.png", (32, 32)) for k in range(10)]
    seen = []
    for rank in (0, 1):
        loader, ds = create_dataloader(files, 32, 2, rank=rank, world_size=2, shuffle=True, workers=0, seed=3)
        assert isinstance(loader.sampler, torch.utils.data.distributed.DistributedSampler)
        seen.append([p for _, _, paths, _ in loader for p in paths])
    assert len(seen[0]) == len(seen[1]) == 5
    assert not set(seen[0]) & set(seen[1])
    assert set(seen[0]) | set(seen[1]) == {str(f) for f in files}


def test_loader_batches_and_is_seeded(red_boxes: list[Path]) -> None:
    def run() -> list[torch.Tensor]:
        loader, _ = create_dataloader(red_boxes, 64, 2, augment=True, hyp=HYP, shuffle=True, workers=0, seed=5)
        torch.manual_seed(0)
        return [imgs for imgs, _, _, _ in loader]

    a, b = run(), run()
    assert [x.shape for x in a] == [(2, 3, 64, 64)] * 2
    assert all(torch.equal(x, y) for x, y in zip(a, b))


# ------------------------------------------------------------------------------------------- real data
def _snapshot(folder: Path) -> dict[str, float]:
    return {str(p): p.stat().st_mtime for p in [folder, *folder.rglob("*")]}


@pytest.mark.shared
def test_helmets_loads_and_reports_edge_boxes(shared_dir: Path) -> None:
    root = shared_dir / "datasets" / "helmets"
    before = _snapshot(root)
    cfg = load_data_yaml(root / "helmets.yaml")
    assert cfg.names == ["With Helmet", "Without Helmet"]
    ds = DetectionDataset(cfg.train, img_size=160, names=cfg.names, augment=True, hyp=HYP)
    r = ds.report
    assert r.images == len(cfg.train) == 611 and r.unreadable == 0
    far = [i for i in r.issues if i.action == "skipped" and "far outside" in i.reason]
    # ~20 boxes reach past the edge: a few overshoot slightly (clipped), most are pixel coordinates (skipped)
    assert 15 <= r.clipped + len(far) <= 25 and r.skipped == len(far)
    assert all(i.line >= 1 and i.file.suffix == ".txt" for i in far)
    for i in range(4):
        img, labels, _, _ = ds.get(i, np.random.default_rng(i))
        assert img.shape == (3, 160, 160) and ((labels[:, 2:] >= 0) & (labels[:, 2:] <= 1)).all()
    assert _snapshot(root) == before
