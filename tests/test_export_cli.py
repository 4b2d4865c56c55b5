"""The export / benchmark / detect sub-commands end to end on a tiny checkpoint and synthetic images."""

from __future__ import annotations

import argparse
import importlib.util
import json

import numpy as np
import pytest
import torch
from PIL import Image

from reports.cli import register
from reports.export import ExportError
from reports.onnx_meta import read_metadata
from yolo.checkpoint import save_checkpoint
from yolo.model import build_model, load_model_yaml


def parse(argv: list[str]):
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command", required=True))
    return ap.parse_args(argv)


@pytest.fixture(scope="module")
def ckpt(tmp_path_factory):
    cfg = load_model_yaml("yolov5n")
    cfg.update(width_multiple=0.125, nc=3)
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    m.names = ["circle", "square", "triangle"]
    d = tmp_path_factory.mktemp("cli")
    return save_checkpoint(d / "tiny.pt", m, {"imgsz": 64, "history": [{"op": "prune", "ratio": 0.25}]})


@pytest.fixture(scope="module")
def exported(ckpt):
    out = ckpt.parent / "export"
    args = parse(["export", "--weights", str(ckpt), "--imgsz", "64", "96", "--out", str(out)])
    assert args.func(args) == 0
    return out / "tiny.onnx"


def test_export_command(exported, capsys):
    meta = read_metadata(exported)
    assert meta["imgsz"] == [64, 96] and meta["names"] == ["circle", "square", "triangle"]
    assert meta["prune"][0]["ratio"] == 0.25


def test_export_command_errors(ckpt, tmp_path):
    args = parse(["export", "--weights", str(ckpt), "--imgsz", "70", "--out", str(tmp_path)])
    with pytest.raises(ExportError, match="--imgsz 70"):
        args.func(args)
    args = parse(["export", "--weights", str(ckpt), "--int8", "--out", str(tmp_path / "m.onnx")])
    with pytest.raises(ValueError, match="--int8 needs --calib-data"):
        args.func(args)


@pytest.mark.parametrize("flags, match", [
    (["--int8", "--calib-data", "nope.yaml"], "nope.yaml: data yaml not found"),
    (["--parity-source", "no-such-folder"], "no-such-folder not found"),
])  # fmt: skip
def test_export_reads_its_inputs_before_writing_a_file(ckpt, tmp_path, monkeypatch, flags, match):
    monkeypatch.chdir(tmp_path)
    args = parse(["export", "--weights", str(ckpt), "--imgsz", "64", "--out", str(tmp_path / "m.onnx"), *flags])
    with pytest.raises((ValueError, OSError), match=match):  # both reach the user as one line
        args.func(args)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, match", [
    (["--data", "nope.yaml"], "nope.yaml: data yaml not found"),
    (["--images", "no-such-folder"], "no-such-folder not found"),
    (["--sweep", "sweep.json"], "--sweep sweep.json: expected a JSON list"),
])  # fmt: skip
def test_report_reads_its_inputs_before_writing_anything(ckpt, tmp_path, monkeypatch, flags, match):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "sweep.json").write_text('{"ratio": 0.5}')
    args = parse(["report", "--baseline", str(ckpt), "--imgsz", "64", "--run-dir", str(tmp_path / "rep"), *flags])
    with pytest.raises((ValueError, OSError), match=match):
        args.func(args)
    assert sorted(x.name for x in tmp_path.iterdir()) == ["sweep.json"]


def test_benchmark_command(exported, tmp_path, capsys):
    out = tmp_path / "lat.json"
    argv = ["benchmark", str(exported), str(exported), "--threads", "1", "--runs", "3", "--warmup", "1"]
    args = parse([*argv, "--json", str(out)])
    assert args.func(args) == 0
    res = json.loads(out.read_text())
    rows = res["results"]["1"]
    assert set(rows) == {"tiny", "tiny-1"} and rows["tiny"]["runs"] == 3
    assert res["environment"]["cpu"]["flags"] is not None
    assert "median ms" in capsys.readouterr().out


def test_detect_command(exported, ckpt, tmp_path):
    src = tmp_path / "imgs"
    src.mkdir()
    rng = np.random.default_rng(0)
    for i, shape in enumerate([(50, 70), (90, 60)]):
        Image.fromarray(rng.integers(0, 256, (*shape, 3), dtype=np.uint8)).save(src / f"im{i}.png")
    for weights in (exported, ckpt):
        out = tmp_path / f"out-{weights.suffix[1:]}"
        argv = ["detect", "--weights", str(weights), "--source", str(src), "--out", str(out), "--imgsz", "64"]
        args = parse([*argv, "--conf-thres", "0.001"])
        assert args.func(args) == 0
        files = sorted(p.name for p in out.iterdir())
        assert files == ["im0.png", "im1.png"]
        with Image.open(out / "im1.png") as im:
            assert im.size == (60, 90)


@pytest.mark.slow
def test_export_int8_command(ckpt, tmp_path):
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "synth", n_train=4, n_val=2, img_size=64)
    argv = ["export", "--weights", str(ckpt), "--imgsz", "64", "--out", str(tmp_path / "q"), "--int8"]
    argv += ["--calib-data", str(data), "--calib-images", "4", "--int8-activations", "u8", "--int8-rounds", "3"]
    args = parse(argv)
    assert args.func(args) == 0
    summary = json.loads((tmp_path / "q" / "tiny-int8.json").read_text())
    sel = summary["notes"]["selection"]
    v = sel["variants"][0]
    assert v["config"]["activations"] == "u8" and v["map"] is not None and sel["fp32"]["map"] is not None
    assert summary["path"].endswith("tiny-int8.onnx")  # explicit u8: kept even if it did not qualify
    assert summary["notes"]["deliverable"].endswith("tiny-int8.onnx" if summary["chosen"] else "tiny.onnx")
    assert summary["latency"]["onnxruntime 1 thread"]["median_ms"] > 0
    assert sorted(p.name for p in (tmp_path / "q").iterdir()) == ["tiny-int8.json", "tiny-int8.onnx", "tiny.onnx"]


@pytest.mark.parametrize("fmt, module", [("openvino", "openvino"), ("ncnn", "ncnn")])
def test_a_missing_runtime_extra_is_one_line_and_nothing_is_written(ckpt, tmp_path, fmt, module):
    """Runs where the extra is absent (as in CI): the same line the runtime test files check where it is present."""
    if importlib.util.find_spec(module) is not None:
        pytest.skip(f"the {fmt} extra is installed here (tests/test_export_{fmt}.py covers it)")
    out = tmp_path / "out"
    args = parse(["export", "--weights", str(ckpt), "--imgsz", "64", "--format", fmt, "--out", str(out)])
    with pytest.raises(ValueError) as e:
        args.func(args)
    assert str(e.value) == f"--format {fmt} needs the {fmt} extra: pip install .[{fmt}]"
    assert not out.exists()
