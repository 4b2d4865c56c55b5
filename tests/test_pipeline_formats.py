"""The pipeline's --formats / --int8 report rows and the fastest format that holds accuracy."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from pipeline.options import PipelineError, PipelineOptions
from reports.choice import describe, fastest_holding
from reports.report import ModelEntry
from tests.test_pipeline import _demo_cmd

EXTRAS = all(importlib.util.find_spec(m) for m in ("openvino", "nncf", "ncnn", "pnnx"))


def _row(role: str, ms: float, m: float | None, derived: bool = True) -> ModelEntry:
    e = ModelEntry(role=role, latency={"onnxruntime 1 thread": {"median_ms": ms}})
    e.metrics = {} if m is None else {"map": m}
    if derived:
        e.notes["derived_from"] = "finetuned"
    return e


def test_fastest_format_is_the_quickest_row_of_the_model_that_holds_its_accuracy():
    rows = [_row("baseline", 50, 0.40, derived=False), _row("finetuned", 30, 0.35, derived=False),
            _row("int8", 12, 0.33), _row("openvino int8", 15, 0.345), _row("openvino", 25, 0.35)]
    choice = fastest_holding(rows)
    assert choice["role"] == "openvino int8"  # int8 is faster but lost 0.02 > 0.01
    assert choice["speedup_vs_source"] == pytest.approx(2.0)
    assert "openvino int8" in describe(choice) and "tolerance 0.01" in describe(choice)
    assert fastest_holding(rows, tolerance=0.05)["role"] == "int8"
    # the baseline is not a format of the fine-tuned model, however fast
    rows.append(_row("baseline-fast", 1, 0.5, derived=False))
    assert fastest_holding(rows)["role"] == "openvino int8"


def test_no_fastest_format_without_scores_or_without_a_second_format():
    assert fastest_holding([_row("finetuned", 30, 0.35, derived=False)]) is None
    assert fastest_holding([_row("finetuned", 30, None, derived=False), _row("int8", 12, None)]) is None
    assert describe(None) is None


def test_unknown_format_or_missing_extra_stops_before_training(tmp_path, monkeypatch):
    data = tmp_path / "data.yaml"
    data.write_text("names: [a]\ntrain: x\nval: x\n")
    with pytest.raises(PipelineError, match="--formats tflite: expected openvino or ncnn"):
        PipelineOptions(cfg="yolov5n", data=str(data), formats=["tflite"]).validate()
    monkeypatch.setitem(sys.modules, "ncnn", None)  # as if the extra were not installed
    with pytest.raises(ValueError, match=r"pip install .*\[ncnn\]"):
        PipelineOptions(cfg="yolov5n", data=str(data), formats=["ncnn"]).validate()


@pytest.mark.e2e
@pytest.mark.skipif(not EXTRAS, reason="needs the openvino and ncnn extras (YOLO_SLIM_EXTRAS=1 scripts/setup.sh)")
def test_demo_with_every_format_reports_them_and_names_the_fastest(tmp_path):
    cmd = _demo_cmd(tmp_path, "--int8", "--formats", "openvino", "ncnn", "--finetune-epochs", "2")
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:] + proc.stdout[-3000:]
    report = json.loads((tmp_path / "runs" / "exp" / "report" / "report.json").read_text())
    roles = {m["role"]: m for m in report["models"]}
    assert {"finetuned", "int8", "openvino", "openvino int8", "ncnn"} <= set(roles)  # int8 of both runtimes
    for role in ("openvino", "ncnn"):
        m = roles[role]
        assert m["notes"]["derived_from"] == "finetuned" and m["notes"]["parity"]["passed"]
        assert m["latency"]["onnxruntime 1 thread"]["runtime"].startswith(role)  # timed with the others
        assert m["metrics"]["map"] is not None  # scored by the same evaluator
    assert roles["openvino int8"]["metrics"]["map"] is not None and roles["openvino int8"]["latency"]
    # ncnn int8 is a row when it holds mAP50-95 within 0.01 of fp32, else the log says it was not kept
    out = " ".join(proc.stdout.split())
    assert ("ncnn int8" in roles and roles["ncnn int8"]["metrics"]["map"] is not None) or "ncnn int8: not kept" in out
    assert "ncnn int8 (max): mAP50-95" in out  # it was built and scored either way
    fastest = report["fastest"]
    assert fastest["role"] in fastest["candidates"] and fastest["source"] == "finetuned"
    assert fastest["map"] >= fastest["source_map"] - fastest["tolerance"]
    assert "fastest format holding accuracy: " + fastest["role"] in " ".join(proc.stdout.split())


def test_pipeline_int8_row_keeps_the_selection_score_and_is_not_scored_again(tmp_path, monkeypatch):
    import pipeline.formats as formats
    import reports.measure as measure

    scored = {"map50": 0.61, "map": 0.33, "precision": 0.7, "recall": 0.6}
    onnx = tmp_path / "finetuned.onnx"
    onnx.write_bytes(b"x")

    def fake_best(src, data, out, imgsz, log):
        return {"path": str(out), "metrics": scored, "notes": {"int8": {"per_channel": True}}}

    monkeypatch.setattr(formats, "quantize_best", fake_best)
    src = ModelEntry(role=formats.SOURCE, onnx_path=str(onnx), model=object())
    rows = formats.format_entries([src], [], data=None, imgsz=64, formats=[], int8=True, log=lambda m: None)
    assert [r.role for r in rows] == ["int8"] and rows[0].metrics == scored

    def no_second_score(*a, **k):
        raise AssertionError("the int8 model was scored a second time")

    monkeypatch.setattr(measure, "evaluate", no_second_score)
    monkeypatch.setattr(measure, "load_data_yaml", lambda d: type("D", (), {"nc": 1, "names": ["a"]})())
    measure._score(rows, data="d.yaml", imgsz=64, evaluator="onnx", eval_kwargs={}, skip_other=True,
                  log=lambda m: None)
    assert rows[0].metrics == scored and "when it was selected" in rows[0].notes["evaluated_with"]
