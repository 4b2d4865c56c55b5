"""A run killed mid-epoch and resumed equals its uninterrupted twin, whatever options it trains with: the sparsity
penalty (uniform, targeted, scheduled), an LR schedule window, a teacher, frozen layers and BatchNorm statistics.
`--resume` takes every option from the run's last.pt; nothing is rebuilt from the resuming call's defaults."""

from __future__ import annotations

import os

import pytest
import torch
from test_finetune_train import NO_AUG, TINY_CFG, tiny_setup

from finetune.cli import main
from finetune.runs import read_results
from finetune.trainer import TrainingInterrupted, TrainOptions, train
from yolo.checkpoint import read_checkpoint, save_checkpoint
from yolo.model import build_model


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    base = tiny_setup(tmp_path_factory.mktemp("resume"))
    torch.manual_seed(7)
    teacher = save_checkpoint(base["root"] / "teacher.pt", build_model(TINY_CFG), {}, None, half=False)
    return {**base, "teacher": teacher}


CASES = {
    "sparse": dict(sparsity=1.0),
    "targeted": dict(sparsity=1.0, sparsity_target={"ratio": 0.3, "round_to": 1}),
    "scheduled": dict(sparsity=1.0, sparsity_schedule="linear", sparsity_layers="prunable", schedule_start=1,
                      schedule_epochs=5, cos_lr=True),
    "teacher_frozen": dict(teacher="<teacher>", freeze=[2], freeze_bn_stats=True),
}


class CtrlCInEpoch1:
    """Ctrl-C after batch 2 of epoch 1: last.pt holds the position after the step at batch 1 (accumulate 2)."""

    def on_batch_end(self, trainer):
        if (trainer.epoch, trainer.batch_index) == (1, 2):
            raise KeyboardInterrupt


def _opts(setup, tmp_path, name, **kw) -> TrainOptions:
    if kw.get("teacher") == "<teacher>":
        kw["teacher"] = str(setup["teacher"])
    return TrainOptions(data=str(setup["data"]), cfg=str(setup["cfg"]), epochs=3, batch_size=2, nbs=4, imgsz=64,
                        device="cpu", workers=0, project=str(tmp_path / "runs"), name=name, noval=True,
                        hyp_overrides=dict(NO_AUG), quiet=True, **kw)


def _state(last) -> dict:
    return read_checkpoint(last)["train_state"]


@pytest.mark.parametrize("case", list(CASES))
def test_killed_run_resumes_into_its_uninterrupted_twin(setup, tmp_path, case):
    twin = train(_opts(setup, tmp_path, "twin", **CASES[case]))
    with pytest.raises(TrainingInterrupted):
        train(_opts(setup, tmp_path, "killed", **CASES[case]), callbacks=[CtrlCInEpoch1()])
    resumed = train(TrainOptions(resume=str(tmp_path / "runs" / "killed"), quiet=True))

    a, b = read_results(twin.run_dir / "results.csv"), read_results(resumed.run_dir / "results.csv")
    assert [r["epoch"] for r in b] == [0, 1, 2]
    for col in ("sparsity_sr", "lr/pg1", "gamma_median", "cut_channels"):
        if col in a[0]:
            assert [r[col] for r in b] == pytest.approx([r[col] for r in a], rel=1e-5), col
    assert resumed.optimizer_steps == twin.optimizer_steps == 6
    sa, sb = _state(twin.last), _state(resumed.last)
    assert sb["callbacks"]["sparsity"]["steps"] == sa["callbacks"]["sparsity"]["steps"]
    assert sb["opt"] == {**sa["opt"], "name": "killed", "resume": str(resumed.last)}
    for k, x in sa["model"].items():
        assert torch.allclose(x.float(), sb["model"][k].float(), rtol=0, atol=1e-6), k


class _Hostile:
    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


@pytest.mark.parametrize("kind", ["hostile", "text", "official"])
def test_resume_of_a_file_that_is_no_run_is_one_line_without_pytorch_advice(tmp_path, capsys, kind):
    """finetune.py --resume on something else: one line naming the file and what was expected; a pickle that asks
    to run code is refused by the allow-list (as the weights loaders do) and nothing of it runs."""
    bad = tmp_path / "last.pt"
    marker = tmp_path / "ran"
    if kind == "hostile":
        torch.save({"train_state": _Hostile(marker)}, bad)
    elif kind == "text":
        bad.write_text("not a checkpoint\n")
    else:
        torch.save({"model": None, "epoch": 3}, bad)  # an official YOLOv5 file's shape, loaded by pickle
    assert main(["--resume", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and str(bad) in err and "expected the weights/last.pt of a finetune.py run" in err
    assert "weights_only" not in err and "trust" not in err  # no PyTorch advice to load it unsafely
    expected = {"hostile": "refused to load: its pickle asks for", "text": "not a readable PyTorch checkpoint",
                "official": "an official YOLOv5 checkpoint"}[kind]
    assert expected in err
    assert not marker.exists()
