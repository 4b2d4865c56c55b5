"""finetune.py as a user runs it: errors in one line, real Ctrl-C (SIGINT) and SIGKILL, then --resume."""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from test_finetune_train import TINY_CFG  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def _cmd(*args: str) -> list[str]:
    return [sys.executable, str(REPO / "finetune.py"), *args]


def _env() -> dict:
    return {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}


def test_cli_bad_hyp_is_one_line(tmp_path):
    bad = tmp_path / "hyp.yaml"
    bad.write_text("lr_0: 0.01\n")
    p = subprocess.run(_cmd("--data", "x.yaml", "--cfg", "yolov5n", "--hyp", str(bad), "--project",
                            str(tmp_path / "runs")), capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 2
    assert p.stderr.strip().splitlines() == [f"error: {bad}: unknown hyperparameter 'lr_0' (did you mean 'lr0'?)"]


@pytest.mark.parametrize("bad", ["data", "weights", "teacher"])
def test_bad_input_leaves_no_run_folder(tmp_path, bad):
    """The run folder is made before the data, weights and teacher are read; a bad one must take it away again,
    and a folder that was there before stays."""
    import torch

    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=2, n_val=1, img_size=64)
    junk = tmp_path / "junk.pt"
    torch.save({"weights": torch.zeros(2)}, junk)
    (tmp_path / "runs" / "exp").mkdir(parents=True)
    (tmp_path / "runs" / "exp" / "mine.txt").write_text("a user's earlier run")
    args = {"data": ["--data", str(tmp_path / "nope.yaml"), "--cfg", "yolov5n"],
            "weights": ["--data", str(data), "--weights", str(junk)],
            "teacher": ["--data", str(data), "--cfg", "yolov5n", "--teacher", str(junk)]}[bad]
    p = subprocess.run(_cmd(*args, "--epochs", "1", "--img", "64", "--project", str(tmp_path / "runs")),
                       capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 2 and len(p.stderr.strip().splitlines()) == 1, p.stderr
    assert sorted(x.name for x in (tmp_path / "runs").iterdir()) == ["exp"]  # exp2 made and taken away
    assert (tmp_path / "runs" / "exp" / "mine.txt").read_text() == "a user's earlier run"


@pytest.fixture
def tiny(tmp_path):
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, img_size=96, seed=1)
    cfg = tmp_path / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CFG))
    return ["--cfg", str(cfg), "--data", str(data), "--epochs", "5", "--batch-size", "2", "--nbs", "4", "--img",
            "64", "--device", "cpu", "--workers", "0", "--project", str(tmp_path / "runs"), "--noval"]


def _start_and_wait_for_epoch0(args: list[str], last: Path, own_group: bool = False) -> subprocess.Popen:
    # a shell starting pytest in the background leaves SIGINT ignored, and children inherit that: restore it
    p = subprocess.Popen(_cmd(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env(),
                         preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL), start_new_session=own_group)
    deadline = time.time() + 240
    while not last.is_file():
        assert p.poll() is None, p.communicate()
        assert time.time() < deadline, "no checkpoint after 240 s"
        time.sleep(0.2)
    return p


def test_sigkill_then_resume_same_epochs_and_steps(tiny, tmp_path):
    run = tmp_path / "runs" / "exp"
    p = _start_and_wait_for_epoch0(tiny, run / "weights" / "last.pt")
    p.send_signal(signal.SIGKILL)
    p.wait(timeout=30)
    r = subprocess.run(_cmd("--resume", str(run), "--device", "cpu", "--workers", "0"), capture_output=True,
                       text=True, env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    # as uninterrupted: 4 batches/epoch, all within the 100-iteration warm-up, whose accumulation stays at 1
    # (round(interp(ni, [0, 100], [1, nbs / batch])) < 1.5 until ni 50): a step per batch, 20 in all
    assert "done: 5 epochs, 20 optimizer steps" in r.stdout
    rows = list(csv.DictReader((run / "results.csv").open()))
    assert [int(x["epoch"]) for x in rows] == [0, 1, 2, 3, 4]
    assert [int(x["optimizer_steps"]) for x in rows] == [4, 8, 12, 16, 20]


@pytest.mark.parametrize("sig,code,word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_ctrl_c_or_sigterm_saves_and_exits_with_resume_hint(tiny, tmp_path, sig, code, word):
    """Ctrl-C, and SIGTERM as job schedulers and `timeout` send it, both save the exact position and resume."""
    run = tmp_path / "runs" / "exp"
    p = _start_and_wait_for_epoch0(tiny, run / "weights" / "last.pt")
    p.send_signal(sig)
    out, err = p.communicate(timeout=120)
    if p.returncode == 0:
        pytest.skip("the run finished before the signal arrived")
    assert p.returncode == code, err[-2000:]
    assert f"{word} at epoch" in out and f"resume with: python finetune.py --resume {run}" in out
    r = subprocess.run(_cmd("--resume", str(run / "weights" / "last.pt")), capture_output=True, text=True,
                       env=_env(), timeout=600)
    assert r.returncode == 0, r.stderr[-2000:]
    assert "done: 5 epochs, 20 optimizer steps" in r.stdout


def test_sigterm_to_the_process_group_with_loader_workers_still_saves(tiny, tmp_path):
    """A scheduler signals the whole process group: the loader workers must not die first and fail the batch the
    main process is waiting for before it has saved its position."""
    run = tmp_path / "runs" / "exp"
    args = [*tiny[: tiny.index("--workers")], "--workers", "2", *tiny[tiny.index("--workers") + 2 :]]
    args[args.index("--epochs") + 1] = "50"
    p = _start_and_wait_for_epoch0(args, run / "weights" / "last.pt", own_group=True)
    time.sleep(1.0)  # into a later epoch, with the workers running
    os.killpg(p.pid, signal.SIGTERM)
    out, err = p.communicate(timeout=120)
    assert p.returncode == 143, err[-2000:]
    assert "terminated at epoch" in out and "DataLoader worker" not in err
