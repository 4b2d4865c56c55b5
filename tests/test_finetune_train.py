"""Training runs on tiny synthetic data: outputs, sparse stage, resume, Ctrl-C, NaN, transfer, overfitting."""

from __future__ import annotations

import csv
import hashlib
import math
from pathlib import Path

import pytest
import torch
import yaml

from finetune.runs import ResultsLog, read_results
from finetune.trainer import (
    NonFiniteLossError,
    TrainError,
    TrainingInterrupted,
    TrainOptions,
    train,
)
from yolo.checkpoint import load_model, read_checkpoint
from yolo.synthetic import make_synthetic_dataset

TINY_CFG = {
    "nc": 3, "depth_multiple": 0.33, "width_multiple": 0.125,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
    "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 1, "C3", [128]],
                 [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "C3", [256]], [-1, 1, "Conv", [512, 3, 2]],
                 [-1, 1, "Conv", [1024, 3, 2]], [-1, 1, "SPPF", [1024, 5]]],
    "head": [[-1, 1, "Conv", [512, 1, 1]], [-1, 1, "nn.Upsample", ["None", 2, "nearest"]],
             [[-1, 5], 1, "Concat", [1]], [-1, 1, "C3", [512, False]],
             [[4, 11, 8], 1, "Detect", ["nc", "anchors"]]],
}
NO_AUG = {"mosaic": 0.0, "fliplr": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0,
          "warmup_epochs": 0.0}


def tiny_setup(root: Path) -> dict:
    """8 + 4 synthetic 96 px images and the tiny model yaml (shared by the test_finetune_* modules)."""
    data = make_synthetic_dataset(root / "data", n_train=8, n_val=4, img_size=96, seed=3)
    cfg = root / "tiny.yaml"
    cfg.write_text(yaml.safe_dump(TINY_CFG))
    return {"root": root, "data": data, "cfg": cfg}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    return tiny_setup(tmp_path_factory.mktemp("ft"))


def _opts(setup, tmp_path, **kw) -> TrainOptions:
    base = dict(data=str(setup["data"]), cfg=str(setup["cfg"]), epochs=2, batch_size=2, nbs=4, imgsz=64,
                device="cpu", workers=0, project=str(tmp_path / "runs"), hyp_overrides=dict(NO_AUG), quiet=True)
    base.update(kw)
    return TrainOptions(**base)


def _sha(path: Path) -> str:
    return hashlib.sha256(Path(path).read_bytes()).hexdigest()


class StepSpy:
    """Counts optimizer steps three ways and checks the penalty hook sees final gradients."""

    def __init__(self):
        self.before = self.after = 0

    def on_train_start(self, trainer):
        self.step_calls = 0
        inner = trainer.optimizer.step

        def counting_step(*a, **k):
            self.step_calls += 1
            return inner(*a, **k)

        trainer.optimizer.step = counting_step

    def on_before_optimizer_step(self, trainer):
        self.before += 1

    def on_optimizer_step(self, trainer):
        self.after += 1


def test_run_outputs_sparse_stage_and_hook_order(setup, tmp_path):
    spy = StepSpy()
    res = train(_opts(setup, tmp_path, epochs=2, sparsity=0.05, noval=True), callbacks=[spy])
    run = tmp_path / "runs" / "exp"
    assert res.run_dir == run and res.last == run / "weights" / "last.pt" and res.best == run / "weights" / "best.pt"
    for f in ("args.yaml", "hyp.yaml", "results.csv", "results.png", "gamma_hist.png"):
        assert (run / f).is_file(), f
    assert yaml.safe_load((run / "hyp.yaml").read_text())["mosaic"] == 0.0
    assert yaml.safe_load((run / "args.yaml").read_text())["sparsity"] == 0.05
    # 4 batches/epoch, accumulate 2 (nbs 4 / batch 2): 2 steps per epoch; penalty once per step, before it
    assert res.optimizer_steps == 4 and spy.before == spy.after == spy.step_calls == 4
    lines = (run / "results.csv").read_text().splitlines()
    header = lines[0].split(",")
    for col in ("epoch", "train/box_loss", "lr/pg0", "metrics/mAP_0.5:0.95", "optimizer_steps", "gamma_lt_1e-3",
                "gamma_lt_1e-2", "sparsity_sr"):
        assert col in header
    assert len(lines) == 3
    assert lines[1].split(",")[header.index("metrics/mAP_0.5")] == ""  # --noval: scored only at the end
    assert lines[2].split(",")[header.index("metrics/mAP_0.5")] != ""
    model, meta = load_model(res.last)
    assert model.names == ["circle", "square", "triangle"]
    assert meta["history"][-1]["op"] == "sparse_train" and meta["history"][-1]["optimizer_steps"] == 4
    assert "train_state" in read_checkpoint(res.last) and "train_state" not in read_checkpoint(res.best)
    again = train(_opts(setup, tmp_path, epochs=1))
    assert again.run_dir == tmp_path / "runs" / "exp2"


def test_sparsity_through_trainer_drives_gammas_down(setup, tmp_path):
    def column(sr, key):
        res = train(_opts(setup, tmp_path, epochs=2, sparsity=sr, nbs=2, noval=True,
                          hyp_overrides={**NO_AUG, "lr0": 0.05}, name=f"sr{sr}"))
        rows = (res.run_dir / "results.csv").read_text().splitlines()
        header = rows[0].split(",")
        return [float(r.split(",")[header.index(key)]) for r in rows[1:]]

    # 8 steps of lr ~0.05 * sr 2.0 on gammas that start at 1.0: the median falls towards 0
    sparse = column(2.0, "gamma_median")
    plain = column(0.0, "gamma_median")
    assert sparse[-1] < 0.5 * plain[-1] and sparse[-1] < sparse[0] < plain[0]


def test_resume_after_kill_matches_uninterrupted(setup, tmp_path):
    full = train(_opts(setup, tmp_path, epochs=3, name="full"))

    class Kill:
        def on_epoch_start(self, trainer):
            if trainer.epoch == 2:
                raise RuntimeError("simulated SIGKILL")  # no interrupt handler: last.pt is end of epoch 1

    with pytest.raises(RuntimeError, match="SIGKILL"):
        train(_opts(setup, tmp_path, epochs=3, name="killed"), callbacks=[Kill()])
    run = tmp_path / "runs" / "killed"
    assert read_checkpoint(run / "weights" / "last.pt")["train_state"]["epoch"] == 2
    resumed = train(TrainOptions(resume=str(run), quiet=True, device="cpu", workers=0))
    assert resumed.run_dir == run
    assert (resumed.epochs, resumed.optimizer_steps) == (full.epochs, full.optimizer_steps) == (3, 6)
    rows = (run / "results.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    a, _ = load_model(full.last)
    b, _ = load_model(resumed.last)
    for (k, x), y in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.allclose(x.float(), y.float(), atol=1e-5), k  # same data order, RNG, optimizer state
    with pytest.raises(TrainError, match="finished"):
        train(TrainOptions(resume=str(run), quiet=True))


def test_ctrl_c_saves_position_and_resume_completes(setup, tmp_path):
    class CtrlC:
        def on_batch_end(self, trainer):
            if trainer.epoch == 1 and trainer.batch_index == 2:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted) as e:
        train(_opts(setup, tmp_path, epochs=2, name="int"), callbacks=[CtrlC()])
    last = tmp_path / "runs" / "int" / "weights" / "last.pt"
    assert e.value.last == last and "--resume" in e.value.message
    state = read_checkpoint(last)["train_state"]
    # batches 0-1 of epoch 1 went into an optimizer step; batch 2 had not: resume restarts at batch 2
    assert (state["epoch"], state["iter"], state["optimizer_steps"]) == (1, 2, 3)
    resumed = train(TrainOptions(resume=str(last), quiet=True, device="cpu", workers=0))
    assert (resumed.epochs, resumed.optimizer_steps) == (2, 4)


def test_mid_epoch_resume_keeps_the_epoch_loss_of_every_batch(setup, tmp_path):
    full = train(_opts(setup, tmp_path, epochs=2, name="whole"))

    class CtrlC:
        def on_batch_end(self, trainer):
            if trainer.epoch == 1 and trainer.batch_index == 2:
                raise KeyboardInterrupt

    with pytest.raises(TrainingInterrupted):
        train(_opts(setup, tmp_path, epochs=2, name="split"), callbacks=[CtrlC()])

    resumed = train(TrainOptions(resume=str(tmp_path / "runs" / "split"), quiet=True, device="cpu", workers=0))

    def losses(run):
        return [(r["epoch"], r["train/box_loss"], r["train/obj_loss"], r["train/cls_loss"])
                for r in read_results(run / "results.csv")]

    # epoch 1's mean covers batches 0-1 (saved with the position) and 2-3 (after the resume), as unbroken
    assert [r[0] for r in losses(resumed.run_dir)] == [0, 1]
    for a, b in zip(losses(full.run_dir), losses(resumed.run_dir)):
        assert a == pytest.approx(b, rel=1e-4)


def test_signal_while_an_epoch_is_recorded_keeps_row_and_last_pt_in_step(setup, tmp_path, monkeypatch):
    import os
    import signal

    from yolo.errors import sigterm_as_interrupt

    real_write = ResultsLog.write

    def write_then_killed(self):
        if len(self.rows) == 1:
            os.kill(os.getpid(), signal.SIGTERM)  # arrives while epoch 0's row is being written
        real_write(self)

    monkeypatch.setattr(ResultsLog, "write", write_then_killed)
    with sigterm_as_interrupt(), pytest.raises(TrainingInterrupted) as e:
        train(_opts(setup, tmp_path, epochs=2, name="sig", noval=True))
    assert e.value.terminated
    run = tmp_path / "runs" / "sig"
    state = read_checkpoint(run / "weights" / "last.pt")["train_state"]
    assert (state["epoch"], state["iter"]) == (1, 0) and [r["epoch"] for r in read_results(run / "results.csv")] == [0]
    monkeypatch.setattr(ResultsLog, "write", real_write)
    train(TrainOptions(resume=str(run), quiet=True, device="cpu", workers=0))
    assert [r["epoch"] for r in read_results(run / "results.csv")] == [0, 1]


@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")  # the swallowed first raise
def test_sigterm_swallowed_by_a_destructor_still_stops_the_run(setup, tmp_path):
    import os
    import signal

    from yolo.errors import sigterm_as_interrupt

    class SignalledInDel:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGTERM)
            sum(range(100))  # the handler runs here; Python prints its exception and drops it

    class Collect:
        def on_batch_end(self, trainer):
            if (trainer.epoch, trainer.batch_index) == (0, 1):
                SignalledInDel()  # made and collected at once, as garbage collection would

    with sigterm_as_interrupt(), pytest.raises(TrainingInterrupted) as e:
        train(_opts(setup, tmp_path, epochs=2, name="gc", noval=True), callbacks=[Collect()])
    assert e.value.terminated
    state = read_checkpoint(tmp_path / "runs" / "gc" / "weights" / "last.pt")["train_state"]
    assert state["epoch"] == 0  # stopped in epoch 0, not after the run


def test_nan_loss_stops_and_keeps_last(setup, tmp_path):
    seen = {}

    class Record:
        def on_epoch_start(self, trainer):
            if trainer.epoch == 1:
                seen["sha"] = _sha(trainer.last_path)

    def poison(trainer, imgs, targets, preds):
        return torch.tensor(math.nan) if (trainer.epoch, trainer.batch_index) == (1, 1) else None

    with pytest.raises(NonFiniteLossError, match=r"nan at epoch 1, iteration 1 of 4") as e:
        train(_opts(setup, tmp_path, epochs=3, name="nan", noval=True), callbacks=[Record()], loss_hooks=[poison])
    last = tmp_path / "runs" / "nan" / "weights" / "last.pt"
    assert str(last) in str(e.value)
    assert _sha(last) == seen["sha"]
    assert read_checkpoint(last)["train_state"]["epoch"] == 1


def test_transfer_learning_new_head_and_input_never_overwritten(setup, tmp_path, capsys):
    first = train(_opts(setup, tmp_path, epochs=1, name="base", noval=True))
    four = yaml.safe_load(Path(setup["data"]).read_text())
    four["names"] = {0: "circle", 1: "square", 2: "triangle", 3: "star"}
    four["nc"] = 4
    four["path"] = str(Path(setup["data"]).parent)
    data4 = tmp_path / "four.yaml"
    data4.write_text(yaml.safe_dump(four))
    before = _sha(first.last)
    res = train(_opts(setup, tmp_path, epochs=1, data=str(data4), weights=str(first.last), cfg="", name="tl",
                      noval=True))
    assert "transfer learning" in capsys.readouterr().out
    model, meta = load_model(res.last)
    assert model.nc == 4 and model.names[-1] == "star" and meta["history"][-1]["new_head"]
    assert meta["history"][0]["op"] == "finetune"  # the base run's history is carried
    assert _sha(first.last) == before
    with pytest.raises(TrainError, match="overwrite its input weights"):
        train(_opts(setup, tmp_path, epochs=1, weights=str(first.last), name="base", exist_ok=True))


@pytest.mark.timeout(900)  # ~60 s on an idle 2-core CPU; generous for a loaded machine
def test_overfits_eight_images(tmp_path):
    """The must-show: YOLOv5n from scratch learns 8 images (scored on the same images) to mAP50 >= 0.9.

    150 AdamW steps of batch 8 (one batch per epoch) at 128 px, no augmentation: mAP50 0.99 / mAP50-95 0.89,
    ~35 s on 2 idle cores.
    """
    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=1, img_size=128, seed=0)
    d = yaml.safe_load(data.read_text())
    d["val"] = d["train"]
    same = tmp_path / "data" / "same.yaml"
    same.write_text(yaml.safe_dump(d))
    res = train(TrainOptions(data=str(same), cfg="yolov5n", epochs=150, batch_size=8, nbs=8, imgsz=128,
                             optimizer="AdamW", hyp_overrides={**NO_AUG, "lr0": 0.01}, noval=True, device="cpu",
                             workers=0, project=str(tmp_path / "runs"), quiet=True))
    assert res.optimizer_steps == 150 and res.metrics["images"] == 8
    assert res.metrics["map50"] >= 0.9, res.metrics


def test_close_mosaic_and_cosine_lr(setup, tmp_path):
    seen = []

    class Watch:
        def on_epoch_start(self, trainer):
            seen.append((trainer.dataset.mosaic, trainer.optimizer.param_groups[1]["lr"]))

    train(_opts(setup, tmp_path, epochs=3, close_mosaic=1, cos_lr=True, noval=True,
                hyp_overrides={**NO_AUG, "mosaic": 1.0}), callbacks=[Watch()])
    assert [m for m, _ in seen] == [True, True, False]
    lrs = [lr for _, lr in seen]
    cosine = [1 - (1 - math.cos(math.pi * e / 3)) / 2 * (1 - 0.01) for e in range(3)]  # lr0 0.01 -> lrf 0.01
    assert lrs == pytest.approx([0.01 * c for c in cosine])
    assert lrs[0] > lrs[1] > lrs[2]


def test_official_weights_transfer(shared_dir, setup, tmp_path, capsys):
    """yolov5n.pt (80 COCO classes, fp16 pickle) on 3-class data: a new Detect head, one line saying so."""
    weights = shared_dir / "weights" / "yolov5n.pt"
    before = _sha(weights)
    res = train(_opts(setup, tmp_path, epochs=1, weights=str(weights), cfg="", noval=True))
    out = capsys.readouterr().out
    assert "transfer learning: the model has 80 classes" in out and "has 3: new Detect head" in out
    model, meta = load_model(res.last)
    assert model.nc == 3 and meta["source"]["sha256"] == before
    assert _sha(weights) == before


def test_targeted_sparsity_through_trainer(setup, tmp_path):
    """--sparsity-target reaches the callback with the run's imgsz: about the targeted 30% of the gammas fall, the
    median holds. (Counted on the weights: the cut set's largest gamma is re-selected every epoch and on some
    machines stays near 1 for these 12 steps while the pushed channels are already far below it.)"""
    res = train(_opts(setup, tmp_path, epochs=3, sparsity=2.0, nbs=2, noval=True, name="targeted",
                      sparsity_target={"ratio": 0.3, "round_to": 1}, hyp_overrides={**NO_AUG, "lr0": 0.05}))
    with open(res.run_dir / "results.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    cut = [float(r["cut_gamma_max"]) for r in rows]
    assert all(int(r["cut_channels"]) > 0 for r in rows)
    assert max(cut[1:]) < cut[0]
    model, _ = load_model(res.last)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    gammas = torch.cat([m.weight.detach().abs().flatten() for m in bns])
    assert 0.2 < float((gammas < 0.5).float().mean()) < 0.4  # 0 without the penalty (all start at 1)
    assert float(rows[-1]["gamma_median"]) > 0.5  # 70% of the channels are never pushed
    meta = read_checkpoint(res.last)["history"][-1]
    assert meta["sparsity_target"] == {"ratio": 0.3, "round_to": 1}


@pytest.mark.parametrize("frozen", [True, False])
def test_freeze_bn_stats_keeps_running_statistics_while_scales_learn(setup, tmp_path, frozen):
    seen = {}

    class Watch:
        def on_epoch_start(self, trainer):
            bns = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            seen.setdefault("modes", []).append({m.training for m in bns})
            seen.setdefault("start", [(m.running_mean.clone(), m.weight.detach().clone()) for m in bns])

        def on_epoch_end(self, trainer, *_):
            bns = [m for m in trainer.model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
            seen["end"] = [(m.running_mean.clone(), m.weight.detach().clone()) for m in bns]

    train(_opts(setup, tmp_path, epochs=2, noval=True, freeze_bn_stats=frozen), callbacks=[Watch()])
    assert seen["modes"] == [{not frozen}] * 2
    stats_kept = all(torch.equal(a[0], b[0]) for a, b in zip(seen["start"], seen["end"]))
    assert stats_kept == frozen
    assert any(not torch.equal(a[1], b[1]) for a, b in zip(seen["start"], seen["end"]))  # the scales still learn


class _GrabDataset:
    def on_train_start(self, trainer):
        self.cached = trainer.dataset._cached is not None


@pytest.mark.parametrize("cache, cached", [("no", False), ("ram", True), ("auto", True)])
def test_cache_option_reaches_the_training_loader(setup, tmp_path, cache, cached):
    grab = _GrabDataset()
    train(_opts(setup, tmp_path, epochs=1, noval=True, cache=cache), callbacks=[grab])
    assert grab.cached is cached  # 'auto' caches here: no workers, and 8 tiny images fit any memory limit


def test_cache_flag_is_parsed_and_checked():
    import argparse

    from finetune.cli import parse_args
    from pipeline.cli import register

    assert parse_args(["--cache", "ram"]).cache == "ram" and parse_args([]).cache == "auto"
    with pytest.raises(SystemExit):
        parse_args(["--cache", "disk"])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["pipeline", "--weights", "w.pt", "--data", "d.yaml", "--cache", "no"])
    assert args.cache == "no"


@pytest.mark.parametrize("device, cores, world, expected", [
    ("cpu", 2, 1, 0), ("cpu", 1, 1, 0), ("cpu", 4, 1, 8), ("cpu", 4, 2, 0), ("cuda", 2, 1, 8),
])  # fmt: skip
def test_default_workers_leave_a_small_cpu_to_the_training_step(monkeypatch, device, cores, world, expected):
    import finetune.setup as setup_mod

    monkeypatch.setattr(setup_mod, "usable_cores", lambda: cores)
    assert setup_mod.resolve_workers(None, torch.device(device), world) == expected
    assert setup_mod.resolve_workers(3, torch.device(device), world) == 3  # an explicit --workers always wins


class _GrabLoader:
    def on_train_start(self, trainer):
        self.workers = trainer.train_loader.num_workers
        self.threads = torch.get_num_threads()
        self.saved = trainer.opt.workers


@pytest.mark.parametrize("cores, workers", [(2, 0), (16, 8)])
def test_training_without_workers_flag_picks_by_cores(setup, tmp_path, monkeypatch, cores, workers):
    import finetune.setup as setup_mod

    monkeypatch.setattr(setup_mod, "usable_cores", lambda: cores)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)  # set, it would decide the threads
    monkeypatch.setattr("os.cpu_count", lambda: cores)  # the loader caps workers at the CPU count
    threads = torch.get_num_threads()
    grab = _GrabLoader()
    try:
        train(_opts(setup, tmp_path, epochs=1, noval=True, workers=None), callbacks=[grab])
    finally:
        torch.set_num_threads(threads)
    assert grab.workers == workers
    assert grab.threads == max(1, cores - workers)  # the step gets the cores the workers leave
    assert grab.saved is None  # not frozen into the run: a resume on another machine picks its own


def test_a_run_inside_a_longer_schedule_takes_that_schedules_lr(setup, tmp_path):
    """--schedule-start 2 --schedule-epochs 5: the run's two epochs get epochs 2 and 3 of the 5-epoch schedule,
    so a sparse stage and the fine-tune after the cut can share one schedule instead of each annealing."""
    seen = []

    class Watch:
        def on_epoch_start(self, trainer):
            seen.append(trainer.optimizer.param_groups[1]["lr"])

    train(_opts(setup, tmp_path, epochs=2, noval=True, schedule_start=2, schedule_epochs=5), callbacks=[Watch()])
    assert seen == pytest.approx([0.01 * ((1 - e / 5) * 0.99 + 0.01) for e in (2, 3)])


@pytest.mark.parametrize("start, total, message", [(4, 5, "must fit inside the schedule"),
                                                   (2, 0, "needs --schedule-epochs"),
                                                   (-1, 5, "must fit inside the schedule")])
def test_a_schedule_window_that_does_not_fit_stops_with_one_line(setup, tmp_path, start, total, message):
    from finetune.trainer import TrainError

    with pytest.raises(TrainError, match=message) as err:
        train(_opts(setup, tmp_path, epochs=2, schedule_start=start, schedule_epochs=total))
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()  # refused before any output
