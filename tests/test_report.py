"""report.json / report.md / plots / rich table, measured entries, and the detect command."""

from __future__ import annotations

import io
import json

import numpy as np
import pytest
import torch
from PIL import Image

from reports.measure import build_entries
from reports.report import SCHEMA, ModelEntry, load_report, write_report
from yolo.model import build_model, load_model_yaml


def tiny_model(width: float = 0.125, seed: int = 0):
    cfg = load_model_yaml("yolov5n")
    cfg.update(width_multiple=width, nc=3)
    torch.manual_seed(seed)
    m = build_model(cfg).eval()
    m.names = ["cat", "dog", "bird"]
    return m


def per_class(scale: float) -> list[dict]:
    return [
        {"class": i, "name": n, "ap50": 0.5 * scale, "ap": 0.3 * scale} for i, n in enumerate(["cat", "dog", "bird"])
    ]


@pytest.fixture(scope="module")
def image_file(tmp_path_factory):
    rng = np.random.default_rng(0)
    p = tmp_path_factory.mktemp("imgs") / "sample.jpg"
    Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)).save(p)
    return p


def test_write_report_files_and_schema(tmp_path, image_file):
    from rich.console import Console

    base, pruned = tiny_model(0.125), tiny_model(0.0625, seed=1)
    lat = {"onnxruntime 1 thread": {"median_ms": 10.0, "p90_ms": 12.0, "runs": 50}}
    entries = [
        ModelEntry.measure(
            "pruned",
            pruned,
            imgsz=64,
            latency={"onnxruntime 1 thread": {"median_ms": 6.0, "p90_ms": 7.0}},
            metrics={"map50": 0.4, "map": 0.25, "per_class": per_class(0.8), "evaluator": "pycocotools"},
        ),
        ModelEntry.measure(
            "baseline",
            base,
            imgsz=64,
            latency=lat,
            metrics={"map50": 0.5, "map": 0.3, "per_class": per_class(1.0), "evaluator": "pycocotools"},
        ),
    ]
    sweep = [{"ratio": r, "map": 0.3 - r / 4, "map50": 0.5 - r / 4, "gflops": 1 - r} for r in (0.0, 0.2, 0.4)]
    console = Console(record=True, width=200, file=io.StringIO())
    paths = write_report(
        tmp_path / "run",
        entries,
        args={"ratio": 0.4, "weights": tmp_path / "w.pt"},
        extras={"sweep": sweep, "images": [image_file], "imgsz": 64, "conf_thres": 0.001},
        console=console,
    )
    rep = load_report(paths["json"])
    assert rep["schema"] == SCHEMA
    for key in ("created", "arguments", "environment", "packages", "models", "comparisons", "plots", "extras"):
        assert key in rep
    assert rep["arguments"]["weights"].endswith("w.pt")
    assert rep["environment"]["cpu"]["logical_cores"] >= 1 and rep["packages"]["torch"]
    assert [m["role"] for m in rep["models"]] == ["baseline", "pruned"]  # baseline first
    b, p = rep["models"]
    assert b["params"] > p["params"] > 0 and b["gflops"] > p["gflops"] > 0
    assert p["metrics"]["per_class"][0]["name"] == "cat"
    cmp = rep["comparisons"][1]
    assert cmp["speedup"] == pytest.approx(10 / 6) and cmp["map_diff"] == pytest.approx(-0.05)
    expected = {"gamma_hist", "channels_per_layer", "ratio_sweep", "latency", "per_class_ap", "detections_0"}
    assert {f.rsplit(".", 1)[0] for f in rep["plots"]} == expected
    for name in rep["plots"]:
        f = tmp_path / "run" / name
        assert f.stat().st_size > 1000
        with Image.open(f) as im:
            assert im.format == "PNG" and im.width > 100
    md = paths["md"].read_text()
    assert md.startswith("# yolov5-slim report") and "| baseline |" in md and "![latency](latency.png)" in md
    text = console.export_text()
    assert "baseline" in text and "pruned" in text and "1.67x" in text


def test_report_needs_entries_and_checks_schema(tmp_path):
    with pytest.raises(ValueError, match="at least one"):
        write_report(tmp_path, [])
    (tmp_path / "x.json").write_text(json.dumps({"schema": "other/1"}))
    with pytest.raises(ValueError, match="not a yolov5-slim report"):
        load_report(tmp_path / "x.json")


def test_build_entries_from_checkpoint_and_onnx(tmp_path):
    from reports.export import export_onnx
    from yolo.checkpoint import save_checkpoint

    m = tiny_model()
    pt = save_checkpoint(tmp_path / "base.pt", m, {"imgsz": 64})
    onnx_path = export_onnx(tiny_model(0.0625), tmp_path / "small.onnx", 64)
    entries = build_entries(
        {"baseline": pt, "pruned": onnx_path},
        tmp_path / "run",
        imgsz=64,
        threads=(1,),
        runs=3,
        warmup=1,
        log=lambda s: None,
    )
    base, small = entries
    assert base.params and base.gflops and base.pt_mb and base.onnx_mb and base.notes["parity"]["passed"]
    assert small.params is None and small.onnx_mb
    for e in entries:
        assert e.latency["onnxruntime 1 thread"]["runs"] == 3
    paths = write_report(tmp_path / "run", entries, print_summary=False)
    assert "latency.png" in load_report(paths["json"])["plots"]


def test_a_model_of_other_classes_is_refused_unless_the_caller_skips_its_score(tmp_path):
    from yolo.checkpoint import save_checkpoint
    from yolo.model import reset_detect_head
    from yolo.synthetic import make_synthetic_dataset
    from yolo.val import ScoringError

    data = make_synthetic_dataset(tmp_path / "data", n_train=2, n_val=2, img_size=64)
    m = tiny_model()  # 3 classes, like the synthetic data: scored
    other = reset_detect_head(tiny_model(), 4)
    pts = {"baseline": save_checkpoint(tmp_path / "b.pt", other, {"imgsz": 64}),
           "finetuned": save_checkpoint(tmp_path / "f.pt", m, {"imgsz": 64})}
    kw = {"imgsz": 64, "threads": (1,), "runs": 2, "warmup": 1, "log": lambda s: None,
          "eval_kwargs": {"workers": 0}}
    with pytest.raises(ScoringError, match=r"model predicts 4 classes but .*data.yaml has 3") as err:
        build_entries(pts, tmp_path / "run", data=data, **kw)
    assert "\n" not in str(err.value)
    base, fine = build_entries(pts, tmp_path / "run2", data=data, skip_other_classes=True, **kw)
    assert base.notes["not_scored"] == "predicts 4 classes, the data has 3" and not base.metrics
    assert "map50" in fine.metrics and "not_scored" not in fine.notes


def test_a_failed_parity_check_is_reported_not_fatal(tmp_path, monkeypatch):
    import reports.export as export
    import reports.measure as measure
    from yolo.checkpoint import save_checkpoint

    real = export.check_parity

    def failing(*args, **kwargs):
        rep = real(*args, **{**kwargs, "raise_on_fail": False})
        rep.failures.append("box diff 0.3 px > 0.05")
        if kwargs.get("raise_on_fail", True):
            raise export.ExportError("parity check failed")
        return rep

    monkeypatch.setattr(measure, "check_parity", failing)  # where build_entries looks it up
    pt = save_checkpoint(tmp_path / "b.pt", tiny_model(), {"imgsz": 64})
    logs: list[str] = []
    (entry,) = build_entries({"baseline": pt}, tmp_path / "run", imgsz=64, threads=(1,), runs=2, warmup=1,
                             log=logs.append)
    assert entry.notes["parity"]["passed"] is False and entry.latency and entry.onnx_mb
    assert any(line.startswith("WARNING baseline: the ONNX file does not match PyTorch") for line in logs)
    paths = write_report(tmp_path / "run", [entry], print_summary=False)
    assert "**ONNX parity check failed** (box diff 0.3 px > 0.05)" in paths["md"].read_text()


def biased_model(obj_bias: float):
    """A tiny model whose objectness logits are pushed to obj_bias: +10 finds boxes everywhere, -20 none."""
    m = tiny_model()
    with torch.no_grad():
        for conv in m.detect.m:
            conv.bias.view(3, -1)[:, 4:] = obj_bias
    return m


def test_report_checks_several_images_and_flags_a_model_that_finds_no_boxes(tmp_path, capsys):
    from rich.console import Console

    from yolo.checkpoint import save_checkpoint

    pts = {"baseline": save_checkpoint(tmp_path / "b.pt", biased_model(10.0), {"imgsz": 64}),
           "pruned": save_checkpoint(tmp_path / "p.pt", biased_model(-20.0), {"imgsz": 64})}  # fmt: skip
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (48, 64, 3), dtype=np.uint8) for _ in range(3)]
    logs: list[str] = []
    base, pruned = build_entries(pts, tmp_path / "run", imgsz=64, threads=(1,), runs=2, warmup=1, log=logs.append,
                                 check_images=images)  # fmt: skip
    assert base.notes["parity"]["images"] == 3 and pruned.notes["parity"]["images"] == 3
    assert base.notes["boxes"]["boxes"] > 0 and pruned.notes["boxes"]["boxes"] == 0
    found = base.notes["boxes"]["boxes"]
    flag = f"finds no boxes on the 3 check image(s) at conf 0.25, where the baseline finds {found}"
    assert f"WARNING pruned: {flag}" in logs
    console = Console(record=True, width=200, file=io.StringIO())
    paths = write_report(tmp_path / "run", [base, pruned], console=console)
    assert f"- pruned: **{flag}**" in paths["md"].read_text()
    assert f"WARNING pruned: {flag}" in console.export_text().replace("\n", " ")
    assert "no mAP (no --data given)" in paths["md"].read_text() and "mAP from ." not in paths["md"].read_text()


def test_report_into_an_existing_folder_leaves_no_stale_files(tmp_path):
    import argparse

    from reports.cli import register
    from yolo.checkpoint import save_checkpoint

    pt = save_checkpoint(tmp_path / "b.pt", tiny_model(), {"imgsz": 64})
    src = tmp_path / "imgs"
    src.mkdir()
    for i in range(2):
        Image.fromarray(np.full((48, 64, 3), 40 * i, np.uint8)).save(src / f"{i}.png")
    run = tmp_path / "rep"
    common = ["report", "--imgsz", "64", "--threads", "1", "--runs", "2", "--run-dir", str(run)]

    def report(*flags):
        ap = argparse.ArgumentParser()
        register(ap.add_subparsers(dest="command", required=True))
        args = ap.parse_args([*common, *flags])
        assert args.func(args) == 0
        return {p.name for p in run.iterdir()}

    first = report("--baseline", str(pt), "--pruned", str(pt), "--images", str(src), "--max-images", "2")
    assert {"pruned.onnx", "detections_0.png", "detections_1.png"} <= first
    (run / "notes.txt").write_text("mine")
    second = report("--baseline", str(pt))
    assert "pruned.onnx" not in second and "detections_0.png" not in second and "detections_1.png" not in second
    assert {"baseline.onnx", "report.json", "report.md", "notes.txt"} <= second


def test_a_latency_budget_is_stated_with_both_timings_at_the_cuts_pace():
    """The report of a latency-targeted run states the budget, the table's prediction, the prune stage's timing
    and its own, and converts its own to the pace the cut was timed at (the baseline beside each)."""
    from reports.report import ModelEntry, budget_lines

    budget = {"budget_ms": 2.9, "target_ms": 3.0, "predicted_ms": 3.42, "measured_ms": 3.17, "measured_before_ms": 6.73,
              "error_pct": 9.3, "tolerance_pct": 5.0, "within_tolerance": False, "threads": 1}  # fmt: skip
    entries = [ModelEntry(role=r, latency={"onnxruntime 1 thread": {"median_ms": ms}})
               for r, ms in (("baseline", 5.30), ("pruned", 2.41), ("finetuned", 2.30))]  # fmt: skip
    text = "\n".join(budget_lines(budget, entries))
    assert "asked: 3.00 ms; predicted by the latency table: 3.42 ms" in text
    named = budget_lines({**budget, "request": "target_latency 3 ms"}, entries)
    assert "- asked: target_latency 3 ms; predicted by the latency table: 3.42 ms" in named
    assert "measured when cut: 3.17 ms against 2.90 ms at that moment's pace (+9.3%, outside the 5% tolerance" in text
    assert f"pruned, timed in this report: 2.41 ms beside the baseline's 5.30 ms; {2.41 * 6.73 / 5.30:.2f} ms" in text
    assert "finetuned, timed in this report: 2.30 ms" in text and "baseline, timed" not in text
    assert budget_lines(None, entries) == [] and budget_lines({}, entries) == []
