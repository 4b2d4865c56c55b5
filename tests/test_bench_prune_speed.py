"""bench/prune_speed.py: the shared result layout, the plan's FLOPs accounting against a measurement, and a
speed-only run keeping the round_to part an earlier run measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest


@pytest.fixture
def prune_speed(monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).parents[1] / "bench")])
    import prune_speed

    return prune_speed


def test_speed_run_writes_shared_layout_and_keeps_round_to(prune_speed, tmp_path, monkeypatch):
    # the layout is tested here; the 5 s speed limit is the bench's to measure on an idle machine, not a unit test's
    monkeypatch.setattr(prune_speed, "LIMIT_S", 1e9)
    out = tmp_path / "ps.json"
    earlier = {"round_to_latency": {"command": "python bench/prune_speed.py --round-to-latency", "models": {}}}
    out.write_text(json.dumps({"name": "ps", "command": "x", "figures": earlier}))
    assert prune_speed.main(["--cfg", "yolov5n", "--imgsz", "160", "--repeats", "1", "--out", str(out)]) == 0
    doc = json.loads(out.read_text())
    assert {"name", "command", "date", "machine", "figures"} <= set(doc)
    assert doc["figures"]["round_to_latency"] == earlier["round_to_latency"]
    sp = doc["figures"]["speed"]
    assert sp["pass"] and sp["groups"] > 10
    # the plan's own FLOPs accounting matches a count on the sliced model
    assert sp["gflops_after"] == pytest.approx(sp["gflops_after_measured"], rel=1e-3)
    assert sp["gflops_after"] < sp["gflops_before"]
    assert "| dependency graph |" in (tmp_path / "ps.md").read_text()
