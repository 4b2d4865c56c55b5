"""The data check every command shares (yolo.data.check): what the scan dropped, clipped or did not use is said
once per split as a summary and `file:line: reason` lines, or refused in one line under --strict (exit 2)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pytest
import yaml
from PIL import Image

from pipeline import cli as pipeline_cli
from tests.zoo import tiny_official
from yolo import cli as yolo_cli
from yolo.checkpoint import save_checkpoint
from yolo.data import DataError, create_dataloader, data_checks, img2label_path, load_data_yaml
from yolo.errors import run_cli
from yolo.model import build_model
from yolo.synthetic import make_synthetic_dataset

NAMES = ["a", "b"]
HYP = {"mosaic": 1.0, "degrees": 5.0, "translate": 0.1, "scale": 0.2, "hsv_v": 0.2, "fliplr": 0.5}
# a.jpg: 3 good boxes; b.jpg: 2 good and a 4-column row; c.jpg: 1 good and class 7; d.jpg: 1 good, one box far
# past the left edge (dropped) and one 0.01 past it (clipped); bad.jpg: not a JPEG; notes.txt: not an image.
ROWS = {
    "a": ["0 0.3 0.3 0.2 0.2", "1 0.6 0.6 0.2 0.2", "0 0.5 0.8 0.2 0.2"],
    "b": ["0 0.3 0.3 0.2 0.2", "1 0.6 0.6 0.2 0.2", "0 0.5 0.5 0.2"],
    "c": ["0 0.3 0.3 0.2 0.2", "7 0.6 0.6 0.2 0.2"],
    "d": ["0 0.3 0.3 0.2 0.2", "0 -0.3 0.5 0.2 0.2", "1 0.06 0.5 0.14 0.2"],
}


def _split(root: Path, split: str) -> Path:
    """Five 64 px JPEGs (one corrupt) with 11 label rows (3 dropped, 1 clipped) and a text file among the images."""
    folder = root / "images" / split
    folder.mkdir(parents=True)
    for name, rows in ROWS.items():
        Image.new("RGB", (64, 64), (40, 160, 40)).save(folder / f"{name}.jpg")
        label = img2label_path(folder / f"{name}.jpg")
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(rows) + "\n")
    (folder / "bad.jpg").write_text("a web page saved as .jpg\n")
    (folder / "notes.txt").write_text("where the photos came from\n")
    return folder


@pytest.fixture
def bad_data(tmp_path: Path) -> Path:
    root = tmp_path / "bad"
    for split in ("train", "val"):
        _split(root, split)
    path = root / "data.yaml"
    path.write_text(yaml.safe_dump({"path": str(root), "train": "images/train", "val": "images/val", "names": NAMES}))
    return path


@pytest.fixture
def weights(tmp_path: Path) -> Path:
    return save_checkpoint(tmp_path / "tiny.pt", build_model(tiny_official("yolov5n", width=0.125, nc=2)))


def _expected(root: Path, split: str) -> list[str]:
    """The warning a split of `_split` gives: the summary, 5 offenders in file order, the count of the rest."""
    img, lab = root / "images" / split, root / "labels" / split
    return [
        f"warning: {split}: 5 images, 4 label files: 3 boxes dropped (1 wrong column count, 1 class outside 0..1, "
        "1 far outside the image), 1 box clipped at the image edge, 1 image unreadable (1 cannot identify "
        "image file), 1 file in the image folder not an image (1 .txt)",
        f"  {lab}/b.txt:3: wrong column count 4: expected 5 (cls xc yc w h) or an odd count >= 7 (cls x1 y1 ...)",
        f"  {img}/bad.jpg: unreadable image (cannot identify image file)",
        f"  {lab}/c.txt:2: class 7 is not an integer in [0, 2)",
        f"  {lab}/d.txt:2: box (-0.4, 0.4, -0.2, 0.6) is far outside the normalised image [0, 1] (more than 0.05 "
        "beyond the edge; pixel coordinates?)",
        f"  {lab}/d.txt:3: box overshoots the image edge by 0.01",
        "  ... and 1 more (--strict makes any of them an error)",
    ]


def _command(argv: list[str]) -> int:
    """`prune.py <argv>` in this process (val and pipeline), with the CLI's one-line errors and exit codes."""
    parser = argparse.ArgumentParser(prog="prune.py")
    sub = parser.add_subparsers(dest="command", required=True)
    for module in (yolo_cli, pipeline_cli):
        module.register(sub)
    args = parser.parse_args(argv)
    return run_cli(args.func, args)


def _warnings(err: str) -> list[str]:
    """The data check's lines in stderr (a warning line and the indented lines under it)."""
    lines, keep = [], False
    for line in err.splitlines():
        keep = line.startswith("warning: ") or (keep and line.startswith("  "))
        if keep:
            lines.append(line)
    return lines


def test_val_says_what_it_skipped(bad_data: Path, weights: Path, capsys) -> None:
    assert _command(["val", "--weights", str(weights), "--data", str(bad_data), "--imgsz", "64", "--workers", "0"]) == 0
    out, err = capsys.readouterr()
    assert _warnings(err) == _expected(bad_data.parent, "val")
    assert "val: 4 images, 8 boxes" in out  # of 11 rows, 3 dropped


def test_val_strict_is_one_line_naming_the_first_offender(bad_data: Path, weights: Path, capsys) -> None:
    argv = ["val", "--weights", str(weights), "--data", str(bad_data), "--imgsz", "64", "--workers", "0", "--strict"]
    assert _command(argv) == 2
    out, err = capsys.readouterr()
    lines = err.strip().splitlines()
    first = bad_data.parent / "labels" / "val" / "b.txt"
    assert len(lines) == 1 and lines[0].startswith(f"error: --strict: {first}:3: wrong column count 4: "), err
    assert "val: 5 images, 4 label files: 3 boxes dropped" in lines[0] and out == ""


def test_training_loader_says_it_once_per_split_on_the_main_rank(bad_data: Path, capsys) -> None:
    cfg = load_data_yaml(bad_data)
    with data_checks():
        for rank in (1, 0, -1):  # rank 1 of a DDP run says nothing; rank 0 says it; the same split again: nothing
            create_dataloader(cfg.train, 64, 2, names=cfg.names, augment=True, hyp=HYP, workers=0, shuffle=True,
                              rank=rank, world_size=2 if rank >= 0 else 1, prefix="train: ")  # fmt: skip
    assert _warnings(capsys.readouterr().err) == _expected(bad_data.parent, "train")
    with data_checks():  # the next run says it again
        create_dataloader(cfg.train, 64, 2, names=cfg.names, workers=0, prefix="train: ")
    assert _warnings(capsys.readouterr().err) == _expected(bad_data.parent, "train")


def test_training_loader_strict_raises_on_every_rank(bad_data: Path, capsys) -> None:
    cfg = load_data_yaml(bad_data)
    for rank in (1, -1):
        with data_checks(strict=True), pytest.raises(DataError, match=r"^--strict: .*b\.txt:3: wrong column") as e:
            create_dataloader(cfg.train, 64, 2, names=cfg.names, workers=0, rank=rank, world_size=2, prefix="train: ")
        assert "\n" not in str(e.value)
    assert capsys.readouterr().err == ""


def test_finetune_says_both_splits_and_strict_stops_it(bad_data: Path, tmp_path: Path, capsys) -> None:
    from finetune.cli import main

    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny_official("yolov5n", width=0.125, nc=2)))
    argv = ["--data", str(bad_data), "--cfg", str(cfg), "--img", "64", "--batch-size", "2", "--epochs", "1",
            "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "runs"), "--quiet"]  # fmt: skip
    assert main([*argv, "--strict"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --strict: ") and "train: 5 images" in err[0]
    assert not (tmp_path / "runs").exists()
    assert main(argv) == 0
    warned = _warnings(capsys.readouterr().err)
    assert warned == _expected(bad_data.parent, "train") + _expected(bad_data.parent, "val")


def test_pipeline_strict_stops_before_its_run_folder(bad_data: Path, weights: Path, tmp_path: Path, capsys) -> None:
    argv = ["pipeline", "--data", str(bad_data), "--weights", str(weights), "--imgsz", "64", "--workers", "0",
            "--project", str(tmp_path / "runs"), "--strict"]  # fmt: skip
    assert _command(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --strict: ") and "b.txt:3: wrong column count" in err[0]
    assert not (tmp_path / "runs").exists()


def test_only_bad_data_is_warned_about(tmp_path: Path, capsys) -> None:
    data = load_data_yaml(make_synthetic_dataset(tmp_path / "clean", n_train=2, n_val=3, img_size=64))
    with data_checks(strict=True):
        create_dataloader(data.val, 64, 2, names=data.names, workers=0, prefix="val: ")
    assert capsys.readouterr().err == ""
    bad = data.val[1]
    with img2label_path(bad).open("a") as f:
        f.write("0 0.5 0.5 0.1\n")
    rows = len(img2label_path(bad).read_text().splitlines())
    with data_checks():
        create_dataloader(data.val, 64, 2, names=data.names, workers=0, prefix="val: ")
    assert _warnings(capsys.readouterr().err) == [
        "warning: val: 3 images, 3 label files: 1 box dropped (1 wrong column count)",
        f"  {img2label_path(bad)}:{rows}: wrong column count 4: expected 5 (cls xc yc w h) or an odd count >= 7 "
        "(cls x1 y1 ...)",
    ]


def test_a_jpeg_cut_short_is_caught_by_the_scan_not_the_loader(tmp_path: Path, capsys) -> None:
    data = load_data_yaml(make_synthetic_dataset(tmp_path / "d", n_train=1, n_val=3, img_size=64))
    full = tmp_path / "full.jpg"
    Image.effect_noise((64, 64), 60).convert("RGB").save(full)
    cut = data.val[0].with_suffix(".jpg")
    cut.write_bytes(full.read_bytes()[: full.stat().st_size // 2])
    data.val[0].unlink()  # its label file (same stem) now belongs to the cut JPEG
    data = load_data_yaml(data.yaml_path)
    with data_checks():
        loader, ds = create_dataloader(data.val, 64, 3, names=data.names, workers=0, prefix="val: ")
    assert len(ds) == 2 and sum(1 for _ in loader) == 1
    warned = _warnings(capsys.readouterr().err)
    assert warned[0].endswith("1 image unreadable (1 image file is truncated)"), warned
    assert warned[1].startswith(f"  {cut}: unreadable image (image file is truncated")
