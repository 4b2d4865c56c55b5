"""bench/recovery.py's iterative schedule end to end at a toy size (slow; needs ../shared): every step is cut,
scored and fine-tuned, the FLOPs reach the target, and a second call with the same recipe reuses the result."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def test_iterative_recovery_run_reaches_the_target_and_is_reused(shared_dir, tmp_path, capsys, monkeypatch):
    # appended, not prepended: bench/sparsity.py must not shadow the sparsity package
    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).parents[1] / "bench")])
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    import recovery

    argv = ["--runs", "p70t", "--minutes", "3", "--epochs", "1", "--imgsz", "160", "--steps", "2",
            "--step-epochs", "1", "--reconstruct", "8", "--workers", "0",
            "--project", str(tmp_path / "runs"), "--out", str(tmp_path / "out")]  # fmt: skip
    assert recovery.main(argv) == 0
    run = json.loads((tmp_path / "out" / "recovery_runs" / "p70t.json").read_text())
    assert [s["step"] for s in run["steps"]] == [1, 2]
    assert run["steps"][0]["flops_kept"] > run["steps"][1]["flops_kept"]
    assert abs(run["flops_kept"] - 0.7) < 0.05
    assert run["epochs"] == run["steps_epochs"] + 1  # one epoch between the cuts, then the final fine-tune
    assert "last" in run["steps"][0] and "cut" in run["steps"][1]
    capsys.readouterr()
    assert recovery.main(argv) == 0
    assert "already done" in capsys.readouterr().out
    sys.modules.pop("recovery", None)
