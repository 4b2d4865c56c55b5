"""finetune.py's inputs checked before any work, with one line each: where the run goes (--project), a model
whose classes the data names differently (--new-head), and how many torch threads it uses (--threads)."""

from __future__ import annotations

import argparse

import pytest
import torch
from test_finetune_train import TINY_CFG, tiny_setup
from test_finetune_train import _opts as _train_opts

import yolo.cli as yolo_cli
from finetune.cli import parse_args
from finetune.trainer import TrainError, TrainOptions, train
from pipeline.cli import options_from_args
from pipeline.cli import register as register_pipeline
from pipeline.run import _train_args
from yolo.checkpoint import load_model, save_checkpoint
from yolo.device import choose_threads
from yolo.model import build_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("inputs"))


def _opts(setup, tmp_path, **kw) -> TrainOptions:
    return _train_opts(setup, tmp_path, **{"epochs": 1, "noval": True, **kw})


class _NoWork:
    def on_train_start(self, trainer):
        raise AssertionError("the run started")


@pytest.mark.parametrize("project, why", [("/proc/x/runs", "(No such file or directory)"),
                                          ("<file>/runs", "(Not a directory)")])
def test_an_unwritable_project_stops_before_any_work(setup, tmp_path, monkeypatch, project, why):
    """--project /proc/x: one line naming the flag, before data, model or loaders are touched."""
    blocker = tmp_path / "file"
    blocker.write_text("")
    project = project.replace("<file>", str(blocker))
    monkeypatch.setattr("finetune.setup.load_data_yaml", lambda *_: pytest.fail("data read before the check"))
    with pytest.raises(TrainError) as e:
        train(_opts(setup, tmp_path, project=project), callbacks=[_NoWork()])
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--project {project}: cannot create or write there") and why in msg
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]  # nothing left behind


# ---------------------------------------------------------------- same class count, other names


@pytest.fixture(scope="module")
def helmet_model(setup):
    """A model whose 3 classes are other things than the synthetic data's circle, square, triangle."""
    torch.manual_seed(0)
    model = build_model(TINY_CFG)
    model.names = ["helmet", "vest", "person"]
    return save_checkpoint(setup["root"] / "helmets.pt", model, {}, None, half=False)


def test_same_class_count_other_names_keeps_the_head_and_says_so(setup, tmp_path, helmet_model, capsys):
    res = train(_opts(setup, tmp_path, cfg="", weights=str(helmet_model), name="kept"))
    lines = [ln for ln in capsys.readouterr().out.splitlines() if "helmet" in ln]
    assert len(lines) == 1, lines
    assert lines[0] == (f"warning: {helmet_model} predicts helmet, vest, person; {setup['data']} names its 3 classes "
                        "circle, square, triangle: the trained Detect head is kept and its classes renamed in order "
                        "(--new-head trains a new head for other classes)")
    model, meta = load_model(res.last)
    assert model.names == ["circle", "square", "triangle"] and meta["history"][-1]["new_head"] is False


def test_new_head_flag_trains_a_new_head_at_the_same_class_count(setup, tmp_path, helmet_model, capsys):
    assert parse_args(["--data", "d.yaml", "--weights", "w.pt", "--new-head"]).new_head
    before = load_model(helmet_model)[0].model[-1].m[0].weight.detach().clone()
    seen = {}

    class Head:
        def on_train_start(self, trainer):
            seen["head"] = trainer.bare_model.model[-1].m[0].weight.detach().clone()

    res = train(_opts(setup, tmp_path, cfg="", weights=str(helmet_model), new_head=True, name="new"),
                callbacks=[Head()])
    out = capsys.readouterr().out
    assert f"--new-head: a new Detect head for the 3 classes of {setup['data']}" in out and "warning" not in out
    assert not torch.equal(seen["head"], before)  # re-initialised, not the helmet model's
    assert load_model(res.last)[1]["history"][-1]["new_head"] is True


def test_val_warns_when_the_data_names_the_classes_otherwise(setup, helmet_model, capsys, monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    parser = argparse.ArgumentParser()
    yolo_cli.register(parser.add_subparsers())
    args = parser.parse_args(["val", "--weights", str(helmet_model), "--data", str(setup["data"]), "--imgsz", "64",
                              "--workers", "0"])
    threads = torch.get_num_threads()
    try:
        args.func(args)
    finally:
        torch.set_num_threads(threads)
    captured = capsys.readouterr()
    assert (f"warning: {helmet_model} predicts helmet, vest, person; {setup['data']} names its classes circle, "
            "square, triangle: scored by class index as the same classes") in captured.err
    assert "using 1 torch threads (OMP_NUM_THREADS=1)" in captured.out


# ---------------------------------------------------------------- threads


@pytest.mark.parametrize("requested, env, expected", [
    (3, {"OMP_NUM_THREADS": "1"}, (3, "--threads 3")),
    (None, {"OMP_NUM_THREADS": "2"}, (2, "OMP_NUM_THREADS=2")),
    (None, {"OMP_NUM_THREADS": "4,2"}, (4, "OMP_NUM_THREADS=4,2")),
    (None, {"OMP_NUM_THREADS": "many"}, (5, "idle best; OMP_NUM_THREADS='many' is not a thread count")),
    (None, {}, (5, "idle best")),
])  # fmt: skip
def test_thread_choice_flag_then_omp_then_default(requested, env, expected):
    assert choose_threads(requested, 5, "idle best", env) == expected


class _Threads(Exception):
    pass


class _GrabThreads:
    def on_train_start(self, trainer):
        raise _Threads(torch.get_num_threads())


@pytest.mark.parametrize("flag, env, expected", [
    (1, "2", "using 1 torch threads (--threads 1)"),
    (None, "1", "using 1 torch threads (OMP_NUM_THREADS=1)"),
    (None, None, "using 2 torch threads (2 usable cores less 0 loader workers)"),
])  # fmt: skip
def test_training_threads_follow_flag_then_omp_then_cores(setup, tmp_path, monkeypatch, capsys, flag, env, expected):
    monkeypatch.setattr("finetune.setup.usable_cores", lambda: 2)
    if env is None:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    else:
        monkeypatch.setenv("OMP_NUM_THREADS", env)
    threads = torch.get_num_threads()
    try:
        with pytest.raises(_Threads) as got:
            train(_opts(setup, tmp_path, threads=flag, quiet=False), callbacks=[_GrabThreads()])
    finally:
        torch.set_num_threads(threads)
    assert [ln for ln in capsys.readouterr().out.splitlines() if "torch threads" in ln] == [expected]
    assert got.value.args[0] == int(expected.split()[1])


def test_threads_flags_reach_training(tmp_path):
    assert parse_args(["--data", "d.yaml", "--cfg", "c.yaml", "--threads", "3"]).threads == 3
    assert parse_args(["--data", "d.yaml", "--cfg", "c.yaml"]).threads is None
    parser = argparse.ArgumentParser()
    register_pipeline(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pipeline", "--weights", "w.pt", "--data", "d.yaml", "--train-threads", "3",
                              "--threads", "1"])
    opt = options_from_args(args)
    assert opt.train_threads == 3 and opt.threads == [1]  # --threads stays the latency measurement's
    assert _train_args(opt, tmp_path, "sparse", epochs=1)["threads"] == 3
    with pytest.raises(TrainError, match="--threads 0: must be >= 1"):
        train(TrainOptions(data="d.yaml", cfg="c.yaml", threads=0, project=str(tmp_path / "runs")))
