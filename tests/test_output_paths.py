"""Output locations are checked before any work: one line naming the flag, nothing computed first."""

from __future__ import annotations

import argparse

import pytest
import torch

import prune.cli as prune_cli
from reports.cli import register as register_reports
from yolo.checkpoint import save_checkpoint
from yolo.cli import register as register_val
from yolo.model import build_model, load_model_yaml


def parse(register, *argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    register(p.add_subparsers())
    return p.parse_args(list(argv))


@pytest.fixture
def blocked(tmp_path):
    """A path no folder can be made under (its parent is a regular file): unwritable for root too."""
    (tmp_path / "file").write_text("x")
    return tmp_path / "file" / "out"


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_model_yaml("yolov5n")
    cfg.update(width_multiple=0.125, nc=3)
    torch.manual_seed(0)
    return save_checkpoint(tmp_path_factory.mktemp("w") / "tiny.pt", build_model(cfg).eval(), {"imgsz": 64})


def no_work(*args, **kwargs):
    raise AssertionError("work started before the output location was checked")


@pytest.mark.parametrize("command", ["sweep", "prune"])
def test_prune_and_sweep_check_project_first(ckpt, blocked, monkeypatch, command):
    monkeypatch.setattr(prune_cli, "_load", no_work)
    amount = ["--ratio", "0.2"] if command == "prune" else []
    args = parse(prune_cli.register, command, "--weights", str(ckpt), "--project", str(blocked), *amount)
    with pytest.raises(ValueError, match=rf"^--project/--name {blocked}/\w+: cannot create or write there \("):
        args.func(args)


def test_benchmark_checks_json_first(ckpt, blocked, monkeypatch):
    import reports.export

    monkeypatch.setattr(reports.export, "export_onnx", no_work)
    args = parse(register_reports, "benchmark", str(ckpt), "--json", str(blocked / "lat.json"), "--runs", "1")
    with pytest.raises(ValueError, match=r"^--json .*lat\.json: cannot create or write there"):
        args.func(args)


def test_val_checks_save_json_first(ckpt, blocked, tmp_path, monkeypatch):
    import yolo.val
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=1, n_val=1, img_size=64)
    monkeypatch.setattr(yolo.val, "evaluate", no_work)
    args = parse(register_val, "val", "--weights", str(ckpt), "--data", str(data), "--save-json",
                 str(blocked / "p.json"))  # fmt: skip
    with pytest.raises(ValueError, match=r"^--save-json .*p\.json: cannot create or write there"):
        args.func(args)
