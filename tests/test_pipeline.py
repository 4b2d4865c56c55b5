"""The pipeline: stage bookkeeping (skip / resume / redo) and one tiny end-to-end run of the demo command."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from pipeline.options import PipelineError, PipelineOptions
from pipeline.state import PipelineState, stage_key

REPO = Path(__file__).resolve().parents[1]


def test_stage_key_chains_upstream_changes():
    a = stage_key({"epochs": 3})
    assert stage_key({"epochs": 3}) == a
    assert stage_key({"epochs": 4}) != a
    assert stage_key({"epochs": 3}, upstream="x") != stage_key({"epochs": 3}, upstream="y")


def test_state_status_transitions(tmp_path):
    s = PipelineState(tmp_path)
    assert s.status("sparse", "k1") == "new"
    s.begin("sparse", "k1", {"epochs": 1})
    assert PipelineState(tmp_path).status("sparse", "k1") == "resume"  # interrupted: reloaded from disk
    s.finish("sparse", {"last": "x.pt"})
    reloaded = PipelineState(tmp_path)
    assert reloaded.status("sparse", "k1") == "done"
    assert reloaded.outputs("sparse") == {"last": "x.pt"}
    assert reloaded.status("sparse", "k2") == "changed"


def test_stage_seconds_add_up_over_interrupted_attempts(tmp_path, monkeypatch):
    import pipeline.state as state

    clock = iter([100.0, 130.0, 500.0, 520.0, 900.0, 905.0])
    monkeypatch.setattr(state.time, "time", lambda: next(clock))
    s = PipelineState(tmp_path)
    s.begin("finetune", "k1", {})
    s.stop("finetune")  # Ctrl-C after 30 s
    s.begin("finetune", "k1", {})  # resumed: the banked 30 s stay
    s.finish("finetune", {})  # 20 s more
    rec = PipelineState(tmp_path).stages["finetune"]
    assert (rec.seconds, rec.attempts) == (50.0, 2)
    s.begin("finetune", "k2", {})  # other inputs: a new stage, its own clock
    s.finish("finetune", {})
    assert (s.stages["finetune"].seconds, s.stages["finetune"].attempts) == (5.0, 1)


def test_sigterm_while_a_finished_stage_is_recorded_still_records_it(tmp_path, monkeypatch):
    import os
    import signal

    import pipeline.state as state
    from yolo.errors import Terminated, sigterm_as_interrupt

    s = PipelineState(tmp_path)
    s.begin("prune", "k1", {})
    real = state.atomic_write_text

    def killed_while_writing(path, text):
        os.kill(os.getpid(), signal.SIGTERM)
        return real(path, text)

    monkeypatch.setattr(state, "atomic_write_text", killed_while_writing)
    with sigterm_as_interrupt(), pytest.raises(Terminated):
        s.finish("prune", {"weights": "p.pt"})
    assert PipelineState(tmp_path).status("prune", "k1") == "done"  # the signal waited for the record


@pytest.mark.parametrize(
    "kw, flag",
    [
        ({"weights": "", "cfg": ""}, "--weights"),
        ({"weights": "missing.pt"}, "missing.pt"),
        ({"cfg": "yolov5n", "ratio": 0.3, "target_flops": 0.5}, "--ratio"),
        ({"cfg": "yolov5n", "data": ""}, "--data"),
        ({"cfg": "yolov5n", "sparsity_mode": "some"}, "--sparsity-mode"),
        ({"cfg": "yolov5n", "rounds": 0}, "--rounds"),
        ({"cfg": "yolov5n", "rounds": 3, "finetune_epochs": 2}, "--finetune-epochs >= 3"),
        ({"cfg": "yolov5n", "sparsity_mode": "targeted", "importance": "l1"}, "--importance slim"),
        ({"cfg": "yolov5n", "close_mosaic": -1}, "--close-mosaic"),
        ({"cfg": "yolov5n", "target_flops": 1.5}, "--target-flops 1.5 is outside"),  # before the sparse stage
        ({"cfg": "yolov5n", "ratio": 1.0, "target_flops": None}, "--ratio 1.0 is outside"),
        ({"cfg": "yolov5n", "round_to": 0}, "--round-to 0"),
        ({"cfg": "yolov5n", "min_keep": -0.5}, "--min-keep -0.5"),
        ({"cfg": "yolov5n", "compensate": "zero"}, "--compensate 'zero' unknown"),
    ],
)
def test_bad_options_name_the_flag(tmp_path, kw, flag):
    data = tmp_path / "data.yaml"
    data.write_text("names: [a]\ntrain: x\nval: x\n")
    opt = PipelineOptions(**{"data": str(data), **kw})
    with pytest.raises(PipelineError, match=flag.replace(".", r"\.")):
        opt.validate()


def _demo_cmd(tmp_path: Path, *extra: str) -> list[str]:
    """A tiny `prune.py demo` command; later flags in `extra` override the defaults (argparse: last wins)."""
    return [
        sys.executable, str(REPO / "prune.py"), "demo",
        "--data-dir", str(tmp_path / "data"), "--project", str(tmp_path / "runs"), "--name", "exp",
        "--n-train", "24", "--n-val", "8", "--imgsz", "64", "--batch-size", "8", "--nbs", "8", "--workers", "0",
        "--sparse-epochs", "2", "--finetune-epochs", "1", "--latency-runs", "5", "--threads", "1", "--quiet",
        *extra,
    ]  # fmt: skip


def _demo(tmp_path: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(_demo_cmd(tmp_path, *extra), capture_output=True, text=True, cwd=tmp_path, timeout=600)


@pytest.mark.e2e
def test_demo_end_to_end_then_rerun_skips(tmp_path):
    first = _demo(tmp_path)
    assert first.returncode == 0, first.stderr[-3000:] + first.stdout[-3000:]
    run = tmp_path / "runs" / "exp"
    report = json.loads((run / "report" / "report.json").read_text())
    models = {m["role"]: m for m in report["models"]}
    assert {"baseline", "pruned", "finetuned"} <= set(models)
    # physically smaller: fewer parameters and at most ~half the FLOPs of the baseline (the default target)
    assert models["pruned"]["params"] < models["baseline"]["params"]
    assert models["pruned"]["gflops"] <= 0.55 * models["baseline"]["gflops"]
    assert Path(models["finetuned"]["onnx_path"]).is_file()
    assert (run / "report" / "report.md").is_file()
    state = json.loads((run / "pipeline.json").read_text())["stages"]
    assert all(s["status"] == "done" for s in state.values())

    # the same command again: every stage is skipped, nothing retrained
    second = _demo(tmp_path)
    assert second.returncode == 0, second.stderr[-2000:]
    assert second.stdout.count("skipped") >= 4

    # a changed fine-tune length redoes only the stages from fine-tuning on
    third = _demo(tmp_path, "--finetune-epochs", "2")
    assert third.returncode == 0, third.stderr[-2000:]
    assert "[sparse] already done" in third.stdout
    assert "[finetune] inputs changed" in third.stdout

    # stopped after the fine-tune's last epoch was saved, before the stage was recorded done: the re-run takes the
    # finished training as it is (no "nothing to resume" error, no retraining)
    raw = json.loads((run / "pipeline.json").read_text())
    raw["stages"]["finetune"]["status"] = "running"
    (run / "pipeline.json").write_text(json.dumps(raw))
    last = run / "finetune" / "weights" / "last.pt"
    mtime = last.stat().st_mtime
    fourth = _demo(tmp_path, "--finetune-epochs", "2")
    assert fourth.returncode == 0, fourth.stderr[-2000:]
    assert "[finetune] was interrupted: resuming" in fourth.stdout and last.stat().st_mtime == mtime
    state = json.loads((run / "pipeline.json").read_text())["stages"]
    assert state["finetune"]["status"] == "done" and state["finetune"]["outputs"]["epochs"] == 2


@pytest.mark.e2e
def test_stopped_during_finetune_resumes_without_redoing_earlier_stages(tmp_path):
    import os
    import signal
    import time

    cmd = _demo_cmd(tmp_path, "--sparse-epochs", "1", "--finetune-epochs", "12", "--latency-runs", "3")
    run = tmp_path / "runs" / "exp"
    proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    deadline = time.time() + 300
    while not (run / "finetune" / "weights" / "last.pt").is_file():  # stopped after a fine-tuning epoch
        assert proc.poll() is None and time.time() < deadline, proc.communicate()[1][-2000:]
        time.sleep(0.2)
    os.killpg(proc.pid, signal.SIGTERM)  # as a job scheduler stops it: the whole process group
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err[-2000:]
    state = json.loads((run / "pipeline.json").read_text())["stages"]
    assert state["sparse"]["status"] == "done" and state["finetune"]["status"] == "running"
    assert state["finetune"]["seconds"] > 0  # the stopped attempt's time was banked
    sparse_mtime = (run / "sparse" / "weights" / "last.pt").stat().st_mtime

    again = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0, again.stderr[-3000:]
    assert "[sparse] already done" in again.stdout and "[prune] already done" in again.stdout
    assert "[finetune] was interrupted: resuming" in again.stdout
    assert (run / "sparse" / "weights" / "last.pt").stat().st_mtime == sparse_mtime  # not retrained
    rows = (run / "finetune" / "results.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + 12  # header + every epoch exactly once
    assert json.loads((run / "pipeline.json").read_text())["stages"]["report"]["status"] == "done"


@pytest.mark.e2e
def test_iterative_rounds_step_toward_the_target(tmp_path):
    """--rounds 2: prune_r1 -> finetune_r1 -> prune -> finetune; the first cut keeps about sqrt(target)."""
    res = _demo(tmp_path, "--sparse-epochs", "1", "--finetune-epochs", "3", "--rounds", "2", "--latency-runs", "3",
                "--target-flops", "0.5")
    assert res.returncode == 0, res.stderr[-3000:]
    run = tmp_path / "runs" / "exp"
    stages = json.loads((run / "pipeline.json").read_text())["stages"]
    assert list(stages)[:6] == ["baseline", "sparse", "prune_r1", "finetune_r1", "prune", "finetune"]
    assert all(s["status"] == "done" for s in stages.values())
    epochs = [len((run / f / "results.csv").read_text().strip().splitlines()) - 1 for f in ("finetune_r1", "finetune")]
    assert epochs == [1, 2]  # 3 epochs split between the rounds, the last one gets the remainder
    flops = {}
    for stage in ("prune_r1", "prune"):
        table = json.loads((run / stage / "prune_table.json").read_text())["totals"]
        flops[stage] = (table["gflops_before"], table["gflops_after"])
    original = flops["prune_r1"][0]
    assert flops["prune"][0] == pytest.approx(flops["prune_r1"][1])  # round 2 starts from round 1's model
    assert 0.5 < flops["prune_r1"][1] / original <= 0.71 + 1e-6  # ~0.5 ** (1/2) of the original FLOPs
    assert flops["prune"][1] / original <= 0.5 + 1e-6


def test_finetune_hyp_reaches_only_the_finetune_stage(tmp_path, monkeypatch):
    run, calls = stubbed_pipeline(tmp_path, monkeypatch)
    hyp = tmp_path / "ft.yaml"
    hyp.write_text("lr0: 0.005\nwarmup_epochs: 0.0\n")
    run()
    stage = dict(calls)
    assert "hyp" not in stage["finetune"] and "hyp" not in stage["sparse"]
    logs = run(finetune_hyp=str(hyp))
    assert "[sparse] already done with these inputs: skipped" in logs
    assert "[finetune] inputs changed since the last run: redoing this stage (and the ones after it)" in logs
    assert calls[-1][0] == "finetune" and calls[-1][1]["hyp"] == str(hyp)
    assert all("hyp" not in kw for name, kw in calls if name == "sparse")
    with pytest.raises(PipelineError, match="--finetune-hyp"):
        run(finetune_hyp=str(tmp_path / "missing.yaml"))


def test_close_mosaic_reaches_only_the_finetune_stage(tmp_path, monkeypatch):
    run, calls = stubbed_pipeline(tmp_path, monkeypatch)
    run(dense_epochs=1)
    logs = run(dense_epochs=1, close_mosaic=10)
    assert "[dense] already done with these inputs: skipped" in logs
    assert "[sparse] already done with these inputs: skipped" in logs
    assert "[finetune] inputs changed since the last run: redoing this stage (and the ones after it)" in logs
    assert calls[-1][0] == "finetune" and calls[-1][1]["close_mosaic"] == 10
    assert all("close_mosaic" not in kw for name, kw in calls if name != "finetune")


def stubbed_pipeline(tmp_path: Path, monkeypatch) -> tuple[Callable[..., list[str]], list[tuple[str, dict]]]:
    """A Pipeline whose stages only record their calls: (run(**options) -> log lines, [(stage, train kwargs)])."""
    from pipeline.run import Pipeline

    data, weights = tmp_path / "data.yaml", tmp_path / "w.pt"
    data.write_text("names: [a]\ntrain: x\nval: x\n")
    weights.write_bytes(b"x")
    calls: list[tuple[str, dict]] = []

    def fake_train(self, stage, resume, **kw):
        calls.append((stage, kw))
        return {"best": f"{stage}/best.pt", "last": f"{stage}/last.pt", "final": f"{stage}/final.pt"}

    monkeypatch.setattr(Pipeline, "_baseline", lambda self: {})
    monkeypatch.setattr(Pipeline, "_prune", lambda self, w, original, r=1: {"weights": "pruned.pt"})
    monkeypatch.setattr(Pipeline, "_train", fake_train)
    monkeypatch.setattr(Pipeline, "_report", lambda self, models: {})

    def run(keyed_none: bool = False, **kw) -> list[str]:
        logs: list[str] = []
        opt = PipelineOptions(**{"data": str(data), "weights": str(weights), "sparse_epochs": 1, "finetune_epochs": 1,
                                 **kw})
        Pipeline(opt, tmp_path / "run", logs.append, family_optimizer_keyed_none=keyed_none).run()
        return logs

    return run, calls


def test_continuous_lr_schedule_makes_the_stages_windows_of_one_schedule(tmp_path, monkeypatch):
    run, calls = stubbed_pipeline(tmp_path, monkeypatch)
    run(sparse_epochs=10, finetune_epochs=80)
    assert all("schedule_start" not in kw and "schedule_epochs" not in kw for _, kw in calls)  # restart: own ones
    logs = run(sparse_epochs=10, finetune_epochs=80, lr_schedule="continuous")
    assert "[sparse] inputs changed since the last run: redoing this stage (and the ones after it)" in logs
    windows = {name: (kw["schedule_start"], kw["schedule_epochs"]) for name, kw in calls[-2:]}
    assert windows == {"sparse": (0, 90), "finetune": (10, 90)}
    calls.clear()
    run(sparse_epochs=10, finetune_epochs=81, lr_schedule="continuous", rounds=2)
    windows = {name: (kw["epochs"], kw["schedule_start"], kw["schedule_epochs"]) for name, kw in calls}
    assert windows == {"sparse": (10, 0, 91), "finetune_r1": (40, 10, 91), "finetune": (41, 50, 91)}


def test_a_touched_input_keeps_its_stages_and_an_edited_one_does_not(tmp_path):
    import os

    from pipeline.state import file_id as _file_id

    f = tmp_path / "data.yaml"
    f.write_text("nc: 2\n")
    before = _file_id(str(f))
    os.utime(f, (1_000_000_000, 1_000_000_000))  # copied / re-mounted / touched: same bytes
    assert _file_id(str(f)) == before
    f.write_text("nc: 3\n")  # same size, other bytes
    assert _file_id(str(f)) != before


def test_no_sparse_stage_from_a_model_of_other_classes_transfers_in_the_finetune(tmp_path):
    """--sparse-epochs 0 from a 5-class checkpoint on 3-class data: the cut is not scored, the fine-tune
    trains a new Detect head on the cut model, and the report measures the start model without scoring it."""
    import torch

    from pipeline.run import Pipeline
    from yolo.checkpoint import load_model, save_checkpoint
    from yolo.model import build_model, load_model_yaml
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=4, img_size=64, seed=2)
    cfg = load_model_yaml("yolov5n")
    cfg.update(width_multiple=0.125, nc=5)
    torch.manual_seed(0)
    start = save_checkpoint(tmp_path / "coco_like.pt", build_model(cfg), {"imgsz": 64})
    logs: list[str] = []
    opt = PipelineOptions(data=str(data), weights=str(start), imgsz=64, batch_size=4, nbs=4, workers=0,
                          sparse_epochs=0, finetune_epochs=1, dense_epochs=0, target_flops=0.5,
                          latency_runs=3, threads=[1])
    summary = Pipeline(opt, tmp_path / "run", logs.append).run()
    text = "\n".join(logs)
    assert "the fine-tune stage trains a new Detect head" in text
    assert "not scored: the model predicts 5 classes" in text
    stages = json.loads((tmp_path / "run" / "pipeline.json").read_text())["stages"]
    assert "sparse" not in stages and stages["prune"]["outputs"]["metrics"] == {}
    finetuned, _ = load_model(summary["models"]["finetuned"])
    assert finetuned.nc == 3
    report = json.loads(Path(summary["report"]["json"]).read_text())
    models = {m["role"]: m for m in report["models"]}
    assert models["baseline"]["notes"]["not_scored"] == "predicts 5 classes, the data has 3"
    assert not models["baseline"]["metrics"]
    assert models["finetuned"]["metrics"]["map50"] >= 0.0 and "map" in models["finetuned"]["metrics"]
    assert models["pruned"]["gflops"] <= 0.55 * models["baseline"]["gflops"]


@pytest.mark.parametrize("bad", ["data", "weights", "cfg", "finetune_hyp", "ignore", "teacher"])
def test_a_bad_input_stops_the_pipeline_before_it_makes_a_run_folder(tmp_path, bad):
    """Also the inputs only a later stage reads (the fine-tune's hyp, a teacher, the cut's --ignore): a typo there
    must not cost the sparse training first."""
    import torch

    from pipeline.run import run_pipeline
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=1, n_val=1, img_size=64)
    broken = tmp_path / "broken.yaml"
    broken.write_text("train: images/train\nval: [\n")
    not_a_detector = tmp_path / "state.pt"
    torch.save({"weights": torch.zeros(2)}, not_a_detector)
    unknown_key = tmp_path / "hyp.yaml"
    unknown_key.write_text("lr0: 0.01\nl0: 0.02\n")
    data_yaml, cfg, weights = {"data": (broken, "yolov5n", ""), "weights": (data, "", not_a_detector),
                               "cfg": (data, broken, "")}.get(bad, (data, "yolov5n", ""))
    later = {"finetune_hyp": {"finetune_hyp": str(unknown_key)}, "ignore": {"ignore": ["model.99.*"]},
             "teacher": {"teacher": str(not_a_detector)}}.get(bad, {})
    opt = PipelineOptions(data=str(data_yaml), cfg=str(cfg), weights=str(weights), project=str(tmp_path / "runs"),
                          **later)
    expected = {"data": "malformed yaml", "cfg": "malformed yaml", "finetune_hyp": "unknown hyperparameter 'l0'",
                "ignore": "--ignore 'model.99.*' matches no layer"}.get(bad, "not a YOLOv5 detector checkpoint")
    with pytest.raises(ValueError, match=re.escape(expected)) as err:
        run_pipeline(opt)
    assert "\n" not in str(err.value)
    assert not (tmp_path / "runs").exists()


def test_a_run_keyed_before_the_family_optimizer_was_named_resumes_without_retraining(tmp_path, monkeypatch):
    """Runs made while no --optimizer keyed None; run_pipeline now names the family's (SGD for YOLOv5) and still
    matches them on the older key chain; an explicit optimizer that differs, or a changed stage, redoes as before."""
    run, calls = stubbed_pipeline(tmp_path, monkeypatch)
    run(dense_epochs=1)  # the older run: optimizer None in every key
    assert [c[0] for c in calls] == ["dense", "sparse", "finetune"]
    logs = run(keyed_none=True, dense_epochs=1, optimizer="SGD")
    assert len(calls) == 3 and all("already done with these inputs" in m for m in logs if m.startswith("["))
    run(keyed_none=True, dense_epochs=1, optimizer="SGD", finetune_epochs=2)
    assert [c[0] for c in calls[3:]] == ["finetune"]  # the changed stage only
    run(dense_epochs=1, optimizer="AdamW", finetune_epochs=2)  # not the family's optimizer: other inputs
    assert [c[0] for c in calls[4:]] == ["dense", "sparse", "finetune"]
