"""Knowledge distillation (finetune.py --teacher): the loss, the teacher checks, a training run and a resume."""

from __future__ import annotations

import copy
import csv
import math
from pathlib import Path

import pytest
import torch

from finetune.cli import parse_args
from finetune.distill import Distiller, TeacherError, check_compatible, load_teacher
from finetune.trainer import TrainOptions, train
from yolo.checkpoint import load_model, save_checkpoint
from yolo.hyp import load_hyp
from yolo.model import build_model, load_model_yaml
from yolo.synthetic import make_synthetic_dataset

NO_AUG = {
    "mosaic": 0.0,
    "fliplr": 0.0,
    "hsv_h": 0.0,
    "hsv_s": 0.0,
    "hsv_v": 0.0,
    "translate": 0.0,
    "scale": 0.0,
    "warmup_epochs": 0.0,
}


def tiny_model(nc: int = 3, seed: int = 0):
    cfg = load_model_yaml("yolov5n")
    cfg.update(width_multiple=0.25, depth_multiple=0.33, nc=nc)
    torch.manual_seed(seed)
    return build_model(cfg)


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    data = make_synthetic_dataset(root / "data", n_train=8, n_val=4, img_size=96, seed=3)
    teacher = save_checkpoint(root / "teacher.pt", tiny_model(seed=1), {}, None, half=False)
    student = save_checkpoint(root / "student.pt", tiny_model(seed=2), {}, None, half=False)
    return {"root": root, "data": data, "teacher": Path(teacher), "student": Path(student)}


def _opts(setup, tmp_path, **kw) -> TrainOptions:
    base = dict(
        data=str(setup["data"]),
        weights=str(setup["student"]),
        teacher=str(setup["teacher"]),
        epochs=1,
        batch_size=4,
        nbs=4,
        imgsz=64,
        device="cpu",
        workers=0,
        project=str(tmp_path / "runs"),
        hyp_overrides=dict(NO_AUG),
        quiet=True,
    )
    base.update(kw)
    return TrainOptions(**base)


def _rows(run_dir: Path) -> list[dict]:
    with open(run_dir / "results.csv", newline="") as f:
        return list(csv.DictReader(f))


# ---------------------------------------------------------------- the loss


def test_gradient_vanishes_when_student_matches_teacher():
    teacher = load_teacher_model()
    dist = Distiller(teacher, teacher, load_hyp(), imgsz=64)
    imgs = torch.rand(2, 3, 64, 64)
    t = dist.teacher_outputs(imgs)
    assert [tuple(x.shape) for x in t] == [(2, 3, 8, 8, 8), (2, 3, 4, 4, 8), (2, 3, 2, 2, 8)]
    same = [x.clone().requires_grad_(True) for x in t]
    total, items = dist.loss(same, t)
    total.backward()
    assert abs(float(total.detach())) < 1e-5 and items.abs().max() < 1e-5  # KL: 0 at the teacher
    assert max(float(g.grad.abs().max()) for g in same) < 1e-6

    moved = [(x + 0.5 * torch.randn_like(x)).requires_grad_(True) for x in t]
    total, items = dist.loss(moved, t)
    total.backward()
    assert float(total.detach()) > 1e-3 and (items > 0).all()
    assert all(float(g.grad.abs().max()) > 1e-6 for g in moved)


def test_gradient_vanishes_through_an_identical_model():
    """The hook on a student copy in the teacher's mode: no gradient reaches its parameters."""
    teacher = load_teacher_model()
    student = copy.deepcopy(teacher).requires_grad_(True)
    dist = Distiller(teacher, student, load_hyp(), imgsz=64)
    imgs = torch.rand(2, 3, 64, 64)
    student.eval()
    student.model[-1].training = True  # raw maps with eval-mode BatchNorm, like the teacher
    loss = dist(None, imgs, torch.zeros(0, 6), student(imgs))
    loss.backward()
    grads = [p.grad.abs().max() for p in student.parameters() if p.grad is not None]
    assert grads and max(float(g) for g in grads) < 1e-6
    assert float(dist.last_item) < 1e-5


def test_weight_zero_disables():
    teacher = load_teacher_model()
    dist = Distiller(teacher, tiny_model(seed=5), load_hyp(None, {"distill": 0.0}), imgsz=64)
    assert dist(None, torch.rand(1, 3, 64, 64), torch.zeros(0, 6), []) is None


def load_teacher_model():
    model = tiny_model(seed=1).eval()
    return model.requires_grad_(False)


# ---------------------------------------------------------------- compatibility


def test_incompatible_teacher_is_one_line(setup, tmp_path):
    other = save_checkpoint(tmp_path / "nc4.pt", tiny_model(nc=4), {}, None, half=False)
    with pytest.raises(TeacherError) as e:
        Distiller.from_weights(other, tiny_model(), load_hyp(), imgsz=64)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith(f"--teacher {other}:") and "classes (nc)" in msg and "4" in msg

    student = tiny_model()
    moved = copy.deepcopy(student)
    moved.model[-1].stride = moved.model[-1].stride * 2
    with pytest.raises(TeacherError, match="--teacher .*strides differ"):
        check_compatible(moved, student)
    with pytest.raises(TeacherError, match="--teacher .*not found"):
        load_teacher(tmp_path / "missing.pt")


def test_cli_incompatible_teacher_and_flags(setup, tmp_path, capsys):
    from finetune.cli import main

    other = save_checkpoint(tmp_path / "nc4.pt", tiny_model(nc=4), {}, None, half=False)
    argv = [
        "--data",
        str(setup["data"]),
        "--weights",
        str(setup["student"]),
        "--teacher",
        str(other),
        "--img",
        "64",
        "--batch-size",
        "2",
        "--epochs",
        "1",
        "--device",
        "cpu",
        "--workers",
        "0",
        "--project",
        str(tmp_path / "runs"),
        "--quiet",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: --teacher") and "classes (nc) differ" in err[0]

    args = parse_args(["--teacher", "t.pt", "--distill-weight", "2.5", "--time-limit", "30"])
    assert args.hyp_overrides == {"distill": 2.5} and args.time_limit == 30.0
    assert TrainOptions.from_any(args).teacher == "t.pt"
    with pytest.raises(SystemExit):
        parse_args(["--distill-weight", "2.5"])


# ---------------------------------------------------------------- training


class GrabTrainer:
    def on_train_end(self, trainer, result):
        self.trainer = trainer


def test_training_with_teacher(setup, tmp_path):
    grab = GrabTrainer()
    res = train(_opts(setup, tmp_path), callbacks=[grab])
    rows = _rows(res.run_dir)
    assert len(rows) == 1 and "train/distill_loss" in rows[0]
    assert math.isfinite(float(rows[0]["train/distill_loss"])) and float(rows[0]["train/distill_loss"]) > 0
    teacher = grab.trainer.distiller.teacher
    assert not teacher.training and not any(p.requires_grad for p in teacher.parameters())
    original, _ = load_model(setup["teacher"])
    for k, v in original.state_dict().items():
        assert torch.equal(v, teacher.state_dict()[k]), k  # BatchNorm statistics too: the teacher stays in eval
    entry = load_model(res.last)[1]["history"][-1]
    assert entry["teacher"] == str(setup["teacher"])


def test_time_limit_then_resume_keeps_teacher(setup, tmp_path):
    res = train(_opts(setup, tmp_path, epochs=2, time_limit=1e-6))
    assert res.epochs == 1 and res.metrics  # stopped after epoch 0, which was scored
    grab = GrabTrainer()
    res2 = train(TrainOptions(resume=str(res.last), time_limit=100.0, quiet=True), callbacks=[grab])
    assert res2.epochs == 2 and grab.trainer.opt.teacher == str(setup["teacher"])
    assert grab.trainer.distiller is not None
    rows = _rows(res2.run_dir)
    assert [int(r["epoch"]) for r in rows] == [0, 1] and all(float(r["train/distill_loss"]) > 0 for r in rows)


def test_time_limit_fit_shortens_the_schedule(setup, tmp_path):
    res = train(_opts(setup, tmp_path, epochs=5, time_limit=1e-6, time_limit_fit=True, teacher=""))
    assert res.epochs == 1 and res.metrics  # the one epoch that fits is the last: scored, LR schedule of 1
    entry = load_model(res.last)[1]["history"][-1]
    assert entry["epochs"] == 1 and entry["teacher"] is None


# ---------------------------------------------------------------- pipeline


def test_pipeline_teacher_is_part_of_the_finetune_key(tmp_path, monkeypatch):
    from test_pipeline import stubbed_pipeline

    from pipeline.options import PipelineError, PipelineOptions

    run, calls = stubbed_pipeline(tmp_path, monkeypatch)
    data, weights = tmp_path / "data.yaml", tmp_path / "w.pt"
    run()
    assert "teacher" not in calls[-1][1]
    assert "[finetune] already done with these inputs: skipped" in run()
    logs = run(teacher="unpruned")
    assert "[finetune] inputs changed since the last run: redoing this stage (and the ones after it)" in logs
    assert "[sparse] already done with these inputs: skipped" in logs
    assert calls[-1] == ("finetune", {"epochs": 1, "weights": "pruned.pt", "teacher": "sparse/final.pt"})
    logs = run(teacher="unpruned", distill_weight=2.0)
    assert any(m.startswith("[finetune] inputs changed") for m in logs)
    assert calls[-1][1]["hyp_overrides"] == {"distill": 2.0}

    with pytest.raises(PipelineError, match="--teacher nope.pt"):
        PipelineOptions(data=str(data), weights=str(weights), teacher="nope.pt").validate()
    with pytest.raises(PipelineError, match="--distill-weight needs --teacher"):
        PipelineOptions(data=str(data), weights=str(weights), distill_weight=1.0).validate()


# ---------------------------------------------------------------- feature imitation


FEAT_ONLY = {"distill_feat": 1.0, "distill_obj": 0.0, "distill_cls": 0.0, "distill_box": 0.0}


def calibrated_teacher():
    """The tiny teacher with BatchNorm statistics from its own activations: at random init (variance 1) the
    features shrink ~10x a layer and the Detect inputs are ~1e-8."""
    model = tiny_model(seed=1).train()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.momentum = None  # cumulative average: one batch sets the statistics
    with torch.no_grad():
        model(torch.rand(4, 3, 64, 64))
    return model.eval().requires_grad_(False)


def test_feature_imitation_is_zero_at_the_teacher_and_pulls_a_changed_student():
    teacher = calibrated_teacher()
    student = copy.deepcopy(teacher).requires_grad_(True)
    dist = Distiller(teacher, student, load_hyp(None, FEAT_ONLY), imgsz=64)
    imgs = torch.rand(2, 3, 64, 64)
    student.eval()
    student.model[-1].training = True
    loss = dist(None, imgs, torch.zeros(0, 6), student(imgs))
    assert [f.shape[1] for f in dist.features["student"]] == [c.in_channels for c in student.model[-1].m]
    assert float(loss.detach()) < 1e-6

    with torch.no_grad():
        student.model[0].conv.weight.mul_(1.5)  # the first layer changed: every level's features move
    loss = dist(None, imgs, torch.zeros(0, 6), student(imgs))
    loss.backward()
    assert float(dist.last_item) > 1e-3
    assert float(student.model[0].conv.weight.grad.abs().max()) > 0  # the pull reaches the backbone
    assert student.model[-1].m[0].weight.grad is None or float(student.model[-1].m[0].weight.grad.abs().max()) == 0


def test_feature_imitation_needs_the_detect_inputs_unpruned():
    from prune.api import PruneConfig, prune_model

    teacher = calibrated_teacher()
    teacher.model[17].cv3.bn.weight.data[:8] = 1e-3  # the weakest channels feed Detect: a global cut takes them
    cut, _ = prune_model(teacher, PruneConfig(ratio=0.3, imgsz=64))
    with pytest.raises(TeacherError) as e:
        Distiller(teacher, cut, load_hyp(None, FEAT_ONLY), imgsz=64, name="t.pt")
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("--teacher t.pt: feature imitation") and "--ignore 'model.24.m.*'" in msg
    Distiller(teacher, cut, load_hyp(), imgsz=64)  # output distillation alone does not need them

    kept, _ = prune_model(teacher, PruneConfig(ratio=0.3, imgsz=64, ignore=("model.24.m.*",)))
    assert sum(p.numel() for p in kept.parameters()) < sum(p.numel() for p in teacher.parameters())
    dist = Distiller(teacher, kept, load_hyp(None, FEAT_ONLY), imgsz=64)
    kept.train()
    loss = dist(None, torch.rand(2, 3, 64, 64), torch.zeros(0, 6), kept(torch.rand(2, 3, 64, 64)))
    assert math.isfinite(float(loss.detach())) and float(loss.detach()) > 0


def test_training_with_feature_imitation(setup, tmp_path):
    grab = GrabTrainer()
    res = train(_opts(setup, tmp_path, hyp_overrides={**NO_AUG, **FEAT_ONLY}), callbacks=[grab])
    rows = _rows(res.run_dir)
    assert math.isfinite(float(rows[0]["train/distill_loss"])) and float(rows[0]["train/distill_loss"]) > 0
    feats = grab.trainer.distiller.features
    assert [f.shape[1] for f in feats["student"]] == [f.shape[1] for f in feats["teacher"]]
