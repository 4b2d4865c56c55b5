"""bench/helmets.py (its helpers in bench/benchlib/helmets_run.py) --dense-from: the unpruned yardstick trained in
another run folder is adopted only when it is finished, as long as asked and hangs off the same starting point;
anything else stops with one line. And the helmets table (bench/benchlib/helmets_table.py) built from run records."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

from pipeline.state import PipelineState, stage_key


@pytest.fixture()
def helmets(monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).parents[1] / "bench")])
    from benchlib import helmets_run

    yield helmets_run
    sys.modules.pop("benchlib.helmets_run", None)


def _run(folder: Path, base_params: dict, dense_epochs: int | None, dense_done: bool = True) -> Path:
    state = PipelineState(folder)
    base_key = stage_key(base_params)
    state.begin("baseline", base_key, base_params)
    state.finish("baseline", {"note": "transfer"})
    if dense_epochs is not None:
        params = {"epochs": dense_epochs, "batch": 16}
        state.begin("dense", stage_key(params, base_key), params)
        if dense_done:
            state.finish("dense", {"best": str(folder / "dense" / "weights" / "best.pt")})
    return folder


def test_finished_dense_stage_is_copied_and_other_stages_kept(tmp_path, helmets):
    donor = _run(tmp_path / "donor", {"weights": "w", "imgsz": 320}, dense_epochs=90)
    run = _run(tmp_path / "run", {"weights": "w", "imgsz": 320}, dense_epochs=None)
    state = PipelineState(run)
    state.begin("sparse", "k1", {})
    state.finish("sparse", {"last": "s.pt"})
    helmets.adopt_dense_stage(donor, run, 90)
    merged = json.loads((run / "pipeline.json").read_text())["stages"]
    assert list(merged) == ["baseline", "dense", "sparse"]  # stage order as the pipeline writes it
    assert merged["dense"] == json.loads((donor / "pipeline.json").read_text())["stages"]["dense"]
    assert merged["sparse"]["outputs"] == {"last": "s.pt"}
    assert PipelineState(run).status("dense", merged["dense"]["key"]) == "done"


def test_adopting_into_an_empty_folder_creates_the_state(tmp_path, helmets):
    donor = _run(tmp_path / "donor", {"weights": "w"}, dense_epochs=30)
    helmets.adopt_dense_stage(donor, tmp_path / "new" / "exp", 30)
    assert set(json.loads((tmp_path / "new" / "exp" / "pipeline.json").read_text())["stages"]) == {"baseline", "dense"}


@pytest.mark.parametrize(
    "case, message",
    [("epochs", "trained 90 epochs, this comparison needs 60"), ("unfinished", "not finished"),
     ("other_start", "other weights, data or image size"), ("missing", "no pipeline.json")],
)
def test_mismatched_donor_stops_with_one_line(tmp_path, helmets, case, message):
    donor = _run(tmp_path / "donor", {"weights": "w"}, dense_epochs=90, dense_done=case != "unfinished")
    run = _run(tmp_path / "run", {"weights": "other" if case == "other_start" else "w"}, dense_epochs=None)
    before = (run / "pipeline.json").read_text()
    with pytest.raises(SystemExit) as err:
        helmets.adopt_dense_stage(tmp_path / "nowhere" if case == "missing" else donor, run,
                                  60 if case == "epochs" else 90)
    assert message in str(err.value) and "\n" not in str(err.value)
    assert (run / "pipeline.json").read_text() == before  # nothing half-merged


def test_epoch_seconds_sum_the_stage_results_even_after_a_resume(tmp_path, helmets):
    weights = tmp_path / "dense" / "weights"
    weights.mkdir(parents=True)
    (tmp_path / "dense" / "results.csv").write_text("epoch,metrics/mAP_0.5,time\n0,0.1,60.5\n1,0.2,59.5\n2,0.3,30\n")
    assert helmets.epoch_seconds({"outputs": {"last": str(weights / "last.pt")}}) == 150.0
    assert helmets.epoch_seconds({"outputs": {}}) == 0.0  # a stage that did not train
    assert helmets.epoch_seconds({"outputs": {"last": str(tmp_path / "gone" / "weights" / "last.pt")}}) == 0.0


def test_gap_bootstrap_scores_both_checkpoints_on_the_same_images(tmp_path, helmets):
    import torch

    from tests.zoo import tiny_official
    from yolo.checkpoint import save_checkpoint
    from yolo.model import build_model
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=1, n_val=5, img_size=96, seed=5)
    torch.manual_seed(0)
    a = save_checkpoint(tmp_path / "a.pt", build_model(tiny_official("yolov5n", width=0.125)), {"imgsz": 96})
    torch.manual_seed(1)
    b = save_checkpoint(tmp_path / "b.pt", build_model(tiny_official("yolov5n", width=0.125)), {"imgsz": 96})
    same = helmets.gap_bootstrap(str(a), str(a), data, imgsz=96)
    assert same["images"] == 5 and same["difference"] == 0.0 and same["sd"] == 0.0
    other = helmets.gap_bootstrap(str(a), str(b), data, imgsz=96)
    assert other["a"] != other["b"] and other["difference"] == pytest.approx(other["a"] - other["b"])


def _result(path: Path, seed: int, epochs: int, isa_flag: str = "avx512f") -> Path:
    command = f"python prune.py pipeline --dense-epochs {epochs}" + (f" --seed {seed}" if seed else "")
    doc = {"machine": {"cpu": {"model": "CPU", "flags": ["avx2", isa_flag]}},
           "figures": {"command": command,
                       "models": {"dense": {"params": 1767000, "gflops": 1.03, "map50": 0.802, "map": 0.452}}}}
    path.write_text(json.dumps(doc))
    return path


def test_reference_gives_the_unpruned_figures_in_the_report_shape(tmp_path, helmets):
    ref = helmets.read_reference(_result(tmp_path / "r.json", seed=1, epochs=90), seed=1, epochs=90)
    assert ref["dense"]["metrics"] == {"map50": 0.802, "map": 0.452} and ref["dense"]["params"] == 1767000
    assert ref["file"] == "r.json" and "(AVX-512)" in ref["host"]


@pytest.mark.parametrize("seed, epochs, message", [(2, 90, "seed 1, 90 epochs; this run is seed 2"),
                                                   (1, 60, "seed 1, 90 epochs; this run is seed 1, 60")])
def test_reference_of_another_comparison_stops_with_one_line(tmp_path, helmets, seed, epochs, message):
    with pytest.raises(SystemExit) as err:
        helmets.read_reference(_result(tmp_path / "r.json", seed=1, epochs=90), seed=seed, epochs=epochs)
    assert message in str(err.value) and "\n" not in str(err.value)


def test_reference_that_is_not_a_result_stops_with_one_line(tmp_path, helmets):
    (tmp_path / "bad.json").write_text('{"figures": {}}')
    with pytest.raises(SystemExit) as err:
        helmets.read_reference(tmp_path / "bad.json", seed=0, epochs=90)
    assert "not a bench/helmets.py result" in str(err.value) and "\n" not in str(err.value)


def test_seed_table_groups_runs_by_recipe_and_skips_runs_without_a_yardstick(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).parents[1] / "bench")])
    from benchlib import helmets_table

    base = "python prune.py pipeline --weights w --latency-runs 30 --threads 1 --project p --name exp --quiet"

    def result(name: str, extra: str, pruned: float, unpruned: float | None) -> None:
        models = {"finetuned": {"params": 9e5, "map50": pruned, "map": 0.42}}
        if unpruned is not None:
            models["dense"] = {"params": 1.8e6, "map50": unpruned, "map": 0.45}
        doc = {"machine": {"cpu": {"model": "CPU", "flags": ["avx2"]}},
               "figures": {"command": f"{base} {extra}", "models": models}}
        (tmp_path / f"{name}.json").write_text(json.dumps(doc))

    result("helmets", "--reconstruct 128", 0.78, 0.80)
    result("helmets_seed1", "--seed 1 --reconstruct 128 --workers 0", 0.75, 0.80)
    result("helmets_mk_seed1", "--seed 1 --reconstruct 128 --workers 0 --min-keep 0.5", 0.77, 0.80)
    result("helmets_broken", "--reconstruct 128", 0.70, None)
    result("helmets_hyp_seed2", "--seed 2 --reconstruct 128 --finetune-hyp /tmp/x/ft.yaml --workers 0", 0.79, 0.80)
    rows, sources = helmets_table.collect(tmp_path)
    assert [(r["recipe"], r["seed"]) for r in rows] == [("(the recipe)", 0), ("(the recipe)", 1),
                                                        ("--finetune-hyp ft.yaml", 2), ("--min-keep 0.5", 1)]
    assert [round(100 * r["gap50"], 1) for r in rows] == [2.0, 5.0, 1.0, 3.0]
    assert len(sources) == 5  # the run without a yardstick is still a record the table names


def test_recipe_names_the_bench_flags_that_differ_from_its_defaults(monkeypatch):
    monkeypatch.setattr(sys, "path", [*sys.path, str(Path(__file__).parents[1] / "bench")])
    from benchlib import helmets_table

    head = "python prune.py pipeline --sparse-epochs 10 --target-flops {} --finetune-epochs 80 --threads 1 --quiet"
    assert helmets_table.recipe_of(head.format("0.5") + " --min-keep 0.5") == "--min-keep 0.5"
    assert helmets_table.recipe_of(head.format("0.7")) == "--target-flops 0.7"
