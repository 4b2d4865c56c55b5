"""bench/latency_vs_flops.py end to end at a toy size (slow; needs ../shared for yolov5n.pt): the sparse stage,
the latency cut and the FLOPs cut timed alike, both fine-tuned, the record."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

import reports.layer_latency as ll

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.slow
@pytest.mark.shared
def test_smoke_cuts_times_finetunes_and_records(shared_dir, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(REPO / "bench")])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import latency_vs_flops

    monkeypatch.setattr(ll, "CACHE_DIR", tmp_path / "latency")  # the table cache stays in the test's folder
    assert latency_vs_flops.main(["--smoke", "--out", str(tmp_path / "out")]) == 0
    fig = json.loads((tmp_path / "out" / "latency_vs_flops.json").read_text())["figures"]
    assert set(fig["models"]) == {"sparse", "latency_cut", "flops_cut"}
    assert fig["settings"]["sparsity_target"] == "plan" and 0 < fig["settings"]["plan_flops"] < 1
    for n in ("latency_cut", "flops_cut"):
        r = fig["models"][n]
        assert r["flops_kept"] < 1 and r["latency_ms"] > 0 and r["finetuned"]["epochs"] == 1
    assert fig["models"]["latency_cut"]["search"]["budget_ms"] > 0
