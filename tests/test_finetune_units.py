"""Training-engine pieces without a training run: hyperparameters, optimiser groups, warm-up, EMA, runs, CLI."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from finetune.callbacks import Callbacks
from finetune.cli import parse_args
from finetune.ema import ModelEMA
from finetune.optim import (
    apply_warmup,
    build_optimizer,
    lr_lambda,
    nominal_accumulate,
    param_groups,
    warmup_iters,
)
from finetune.runs import ResultsLog, read_results
from finetune.trainer import TrainOptions, find_resume_checkpoint, fitness, freeze_layers
from yolo.fileio import increment_run_dir
from yolo.hyp import DEFAULT_HYP_PATH, HypError, load_hyp

SCRATCH_LOW = {
    "lr0": 0.01, "lrf": 0.01, "momentum": 0.937, "weight_decay": 0.0005, "warmup_epochs": 3.0,
    "warmup_momentum": 0.8, "warmup_bias_lr": 0.1, "box": 0.05, "cls": 0.5, "cls_pw": 1.0, "obj": 1.0,
    "obj_pw": 1.0, "iou_t": 0.2, "anchor_t": 4.0, "fl_gamma": 0.0, "hsv_h": 0.015, "hsv_s": 0.7, "hsv_v": 0.4,
    "degrees": 0.0, "translate": 0.1, "scale": 0.5, "shear": 0.0, "perspective": 0.0, "flipud": 0.0,
    "fliplr": 0.5, "mosaic": 1.0, "mixup": 0.0, "copy_paste": 0.0, "label_smoothing": 0.0,
}
DISTILL_DEFAULTS = {"distill": 1.0, "distill_obj": 1.0, "distill_cls": 0.5, "distill_box": 0.05, "distill_feat": 0.0}


# ---------------------------------------------------------------- hyperparameters


def test_default_hyp_is_scratch_low():
    hyp = load_hyp()
    assert {k: hyp[k] for k in SCRATCH_LOW} == SCRATCH_LOW
    # plus the distillation gains, used only with --teacher
    assert {k: v for k, v in hyp.items() if k not in SCRATCH_LOW} == DISTILL_DEFAULTS
    assert DEFAULT_HYP_PATH.is_file()


def test_hyp_file_partial_and_overrides(tmp_path):
    f = tmp_path / "my.yaml"
    f.write_text("lr0: 0.002\nmosaic: 0\n")
    hyp = load_hyp(f, {"fliplr": 0.0})
    assert hyp["lr0"] == 0.002 and hyp["mosaic"] == 0.0 and hyp["fliplr"] == 0.0 and hyp["lrf"] == 0.01


def test_hyp_unknown_key_names_file_and_suggests(tmp_path):
    f = tmp_path / "typo.yaml"
    f.write_text("lr0: 0.01\nmomentun: 0.9\n")
    with pytest.raises(HypError) as e:
        load_hyp(f)
    msg = str(e.value)
    assert str(f) in msg and "'momentun'" in msg and "did you mean 'momentum'" in msg
    assert "\n" not in msg


@pytest.mark.parametrize(
    "text, words",
    [("lr0: fast\n", ["'lr0'", "number"]), ("mosaic: true\n", ["'mosaic'", "number"]),
     ("fliplr: 1.5\n", ["'fliplr'", "outside"]), ("lr0: .nan\n", ["'lr0'", "outside"]),
     ("- 1\n- 2\n", ["mapping"])],
)
def test_hyp_bad_values(tmp_path, text, words):
    f = tmp_path / "bad.yaml"
    f.write_text(text)
    with pytest.raises(HypError) as e:
        load_hyp(f)
    assert str(f) in str(e.value) and all(w in str(e.value) for w in words)


def test_hyp_dump_reloads(tmp_path):
    from yolo.hyp import dump_hyp

    hyp = load_hyp(None, {"lr0": 0.003})
    dump_hyp(hyp, tmp_path / "hyp.yaml")
    assert load_hyp(tmp_path / "hyp.yaml") == hyp


def test_hyp_bad_override_and_missing_file(tmp_path):
    with pytest.raises(HypError, match="override.*'warmup'"):
        load_hyp(None, {"warmup": 1})
    with pytest.raises(HypError, match="not found"):
        load_hyp(tmp_path / "nope.yaml")
    (tmp_path / "broken.yaml").write_text("lr0: 0.01\nmomentum: [0.9\n")
    with pytest.raises(HypError, match=r"broken\.yaml:3: malformed yaml \(expected"):
        load_hyp(tmp_path / "broken.yaml")


# ---------------------------------------------------------------- optimiser, schedule, warm-up


def _tiny() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 4, 3, bias=False), nn.BatchNorm2d(4), nn.Conv2d(4, 2, 1))


def test_three_param_groups():
    model = _tiny()
    g = param_groups(model)
    assert [len(g[k]) for k in ("bias", "decay", "bn")] == [2, 2, 1]  # BN bias + conv bias; 2 conv weights
    opt = build_optimizer(model, "SGD", lr=0.01, momentum=0.9, decay=1e-4)
    names = [x["name"] for x in opt.param_groups]
    assert names == ["bias", "decay", "bn"]
    assert [x["weight_decay"] for x in opt.param_groups] == [0.0, 1e-4, 0.0]
    assert opt.param_groups[0]["nesterov"]
    adam = build_optimizer(model, "AdamW", lr=0.001, momentum=0.9, decay=1e-4)
    assert isinstance(adam, torch.optim.AdamW) and adam.param_groups[0]["betas"] == (0.9, 0.999)
    with pytest.raises(ValueError, match="SGD, AdamW"):
        build_optimizer(model, "Lion")


def test_lr_schedules():
    lin = lr_lambda(10, 0.01)
    assert lin(0) == 1.0 and lin(10) == pytest.approx(0.01) and lin(5) == pytest.approx(0.505)
    cos = lr_lambda(10, 0.01, cos=True)
    assert cos(0) == pytest.approx(1.0) and cos(10) == pytest.approx(0.01) and cos(5) == pytest.approx(0.505)
    assert cos(2) > lin(2)
    for cos_lr in (False, True):  # windows of one schedule, end to end, are that schedule
        whole = lr_lambda(90, 0.01, cos_lr)
        sparse, finetune = lr_lambda(90, 0.01, cos_lr, start=0), lr_lambda(90, 0.01, cos_lr, start=10)
        assert [sparse(x) for x in range(10)] + [finetune(x) for x in range(80)] == [whole(x) for x in range(90)]
        assert finetune(0) == pytest.approx(whole(10)) and finetune(0) < 1.0


def test_warmup_matches_yolov5_interp():
    hyp = load_hyp()
    assert warmup_iters(3.0, 10) == 100 and warmup_iters(3.0, 100) == 300 and warmup_iters(0, 100) == 0
    assert nominal_accumulate(64, 16) == 4 and nominal_accumulate(64, 64) == 1 and nominal_accumulate(64, 128) == 1
    opt = build_optimizer(_tiny(), "SGD", lr=0.01, momentum=hyp["momentum"])
    acc = apply_warmup(opt, 0, 100, 1.0, hyp, nbs=64, batch_size=16)
    assert acc == 1
    assert [g["lr"] for g in opt.param_groups] == [0.1, 0.0, 0.0]
    assert opt.param_groups[1]["momentum"] == pytest.approx(0.8)
    acc = apply_warmup(opt, 50, 100, 0.9, hyp, nbs=64, batch_size=16)
    assert acc == max(1, round(np.interp(50, [0, 100], [1, 4])))
    assert opt.param_groups[0]["lr"] == pytest.approx((0.1 + 0.009) / 2)
    assert opt.param_groups[2]["lr"] == pytest.approx(0.009 / 2)
    acc = apply_warmup(opt, 100, 100, 0.9, hyp, nbs=64, batch_size=16)
    assert acc == 4 and all(g["lr"] == pytest.approx(0.009) for g in opt.param_groups)
    assert opt.param_groups[0]["momentum"] == pytest.approx(0.937)


# ---------------------------------------------------------------- EMA


def test_ema_decay_ramp_and_update():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = ModelEMA(model)
    assert ema.decay() == 0.0
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    ema.update(model)
    d = 0.9999 * (1 - math.exp(-1 / 2000))
    assert ema.updates == 1
    w0 = ema.ema[0].weight
    assert not w0.requires_grad
    expected = d * (model[0].weight - 1) + (1 - d) * model[0].weight
    assert torch.allclose(w0, expected)
    assert ema.ema[1].num_batches_tracked == model[1].num_batches_tracked
    state = ema.state_dict()
    other = ModelEMA(model)
    other.load_state_dict(state)
    assert other.updates == 1 and torch.equal(other.ema[0].weight, w0)


# ---------------------------------------------------------------- run folders, results, options


def test_run_dirs_increment(tmp_path):
    assert increment_run_dir(tmp_path, "exp") == tmp_path / "exp"
    (tmp_path / "exp").mkdir()
    assert increment_run_dir(tmp_path, "exp") == tmp_path / "exp2"
    (tmp_path / "exp2").mkdir()
    assert increment_run_dir(tmp_path, "exp") == tmp_path / "exp3"
    assert increment_run_dir(tmp_path, "exp", exist_ok=True) == tmp_path / "exp"


def test_results_log_roundtrip_and_truncate(tmp_path):
    log = ResultsLog(tmp_path / "results.csv")
    for e in range(3):
        log.append({"epoch": e, "train/box_loss": 0.1 * e, "metrics/mAP_0.5": math.nan, "optimizer_steps": 2 * e})
    again = ResultsLog(tmp_path / "results.csv")
    again.load(before_epoch=2)
    assert [r["epoch"] for r in again.rows] == [0, 1]
    assert math.isnan(again.rows[1]["metrics/mAP_0.5"]) and again.rows[1]["optimizer_steps"] == 2
    rows = read_results(tmp_path / "results.csv")
    assert [r["epoch"] for r in rows] == [0, 1, 2] and rows[2]["train/box_loss"] == pytest.approx(0.2)
    assert read_results(tmp_path / "missing.csv") == []


def test_fitness_and_freeze():
    assert fitness({"map50": 0.5, "map": 0.3}) == pytest.approx(0.32)

    class M(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = nn.Sequential(nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1), nn.Conv2d(1, 1, 1))

    m = M()
    assert freeze_layers(m, [0]) == []
    assert freeze_layers(m, [2]) == ["model.0.weight", "model.0.bias", "model.1.weight", "model.1.bias"]
    m2 = M()
    assert freeze_layers(m2, [0, 2]) == ["model.0.weight", "model.0.bias", "model.2.weight", "model.2.bias"]
    assert m2.model[1].weight.requires_grad and not m2.model[2].weight.requires_grad


def test_cli_flags_map_to_options():
    args = parse_args(["--data", "d.yaml", "--weights", "w.pt", "--img", "320", "--batch-size", "8",
                       "--cos-lr", "--sparsity", "0.001", "--sparsity-schedule", "linear", "--resume",
                       "--label-smoothing", "0.1", "--optimizer", "AdamW", "--freeze", "10", "--no-amp"])
    opt = TrainOptions.from_any(args)
    assert (opt.imgsz, opt.batch_size, opt.cos_lr, opt.sparsity, opt.sparsity_schedule) == (320, 8, True, 0.001,
                                                                                           "linear")
    assert opt.resume is True and opt.hyp_overrides == {"label_smoothing": 0.1} and opt.freeze == [10]
    assert opt.optimizer == "AdamW" and opt.amp is False
    assert TrainOptions.from_any(parse_args([])).resume is False


def test_find_resume_checkpoint(tmp_path):
    run = tmp_path / "exp" / "weights"
    run.mkdir(parents=True)
    (run / "last.pt").write_bytes(b"x")
    assert find_resume_checkpoint(str(tmp_path / "exp"), tmp_path) == run / "last.pt"
    assert find_resume_checkpoint(True, tmp_path) == run / "last.pt"
    with pytest.raises(ValueError, match="not found"):
        find_resume_checkpoint(str(tmp_path / "nope"), tmp_path)


def test_callbacks_dispatch_and_state():
    calls = []

    class A:
        name = "a"

        def __init__(self):
            self.n = 0

        def on_epoch_start(self, trainer):
            calls.append(("a", trainer))

        def state_dict(self):
            return {"n": 7}

        def load_state_dict(self, s):
            self.n = s["n"]

    class B:
        def on_epoch_end(self, trainer, row):
            row["b"] = 1

    a = A()
    cbs = Callbacks([a, B()])
    cbs.run("on_epoch_start", "T")
    row = {}
    cbs.run("on_epoch_end", "T", row)
    assert calls == [("a", "T")] and row == {"b": 1}
    assert cbs.state_dict() == {"a": {"n": 7}}
    cbs.load_state_dict({"a": {"n": 3}})
    assert a.n == 3
    with pytest.raises(ValueError):
        cbs.run("on_typo")


def test_progress_bar_renders_without_error(capsys):
    from finetune.progress import EpochProgress

    with EpochProgress(True, 3, "epoch 0/0") as bar:
        for _ in range(3):
            bar.update(torch.tensor([0.1, 0.2, 0.3]), 5, 64)
    assert "box 0.1000" in capsys.readouterr().out


def test_deferred_interrupts_hold_ctrl_c_until_the_block_ends():
    import os
    import signal

    from yolo.errors import deferred_interrupts

    # Python's own Ctrl-C handler, whatever this process inherited: a job started in the background by a
    # non-interactive shell ignores SIGINT, and the held signal is then (rightly) delivered to SIG_IGN
    outer = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        done = []
        with pytest.raises(KeyboardInterrupt), deferred_interrupts():
            os.kill(os.getpid(), signal.SIGINT)
            done.append("after the signal")  # still runs: the signal waits
        assert done == ["after the signal"] and signal.getsignal(signal.SIGINT) is signal.default_int_handler
    finally:
        signal.signal(signal.SIGINT, outer)
