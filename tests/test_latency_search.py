"""Latency budgets on the pipeline (checked against the floor before anything is written, in the prune stage's key,
a targeted sparse stage aimed at the budget's FLOPs equivalent) and depth moves inside the latency search (a free
block goes before any channel). Fake predictors and timers: the timing itself is tests/test_latency_model.py's."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

import pipeline.latency as pl
from pipeline.options import PipelineError, PipelineOptions
from pipeline.run import Pipeline, run_pipeline
from prune import PruneConfig, PruneError, prune_to_latency
from prune.graph import build_graph
from prune.latency_moves import parse_moves
from tests.latency_fakes import fake_flat_profile
from tests.test_pipeline import stubbed_pipeline
from tests.test_prune_structure import tiny, zero_residual
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.checkpoint import load_model, save_checkpoint
from yolo.synthetic import make_synthetic_dataset

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::prune.PruneWarning")]
IMGSZ = 96


class FlopsPredictor:
    """A stand-in for the latency table: each conv costs its multiply-adds (x 1e-6 ms), plus a fixed 0.1 ms."""

    def __init__(self, model):
        graph = build_graph(model, IMGSZ)
        self.geo = {n: g.kk * g.hw / g.groups * 1e-6 for n, g in graph.convs.items()}
        self.full = {n: (g.cin, g.cout) for n, g in graph.convs.items()}

    def layer_ms(self, widths):
        return {n: w * float(np.prod(widths.get(n, self.full[n]))) for n, w in self.geo.items()}

    def total_ms(self, widths):
        return 0.1 + sum(self.layer_ms(widths).values())


def constant_timer(models):
    return dict.fromkeys(models, 1.0)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d") / "data", n_train=4, n_val=2, img_size=IMGSZ, seed=1)


@pytest.fixture
def flat_table(monkeypatch):
    """No profiling: a one-point table per conv (0.01 ms at full width), built once and reused from its file."""
    return fake_flat_profile(monkeypatch)


def test_free_block_goes_before_any_channel():
    model = tiny()
    zero_residual(model, 6, 1)  # its residual branch adds exactly zero: removing it changes nothing
    pred = FlopsPredictor(model)
    full = pred.total_ms(pred.full)
    block_ms = sum(v for n, v in pred.layer_ms(pred.full).items() if n.startswith("model.6.m.1."))
    images = torch.rand(2, 3, IMGSZ, IMGSZ)
    cfg = PruneConfig(target_latency=full - 0.9 * block_ms, imgsz=IMGSZ, round_to=1)
    pruned, table = prune_to_latency(model, cfg, pred, constant_timer, iterations=1, moves=("width", "depth"),
                                     images=images)  # fmt: skip
    assert [m["name"] for m in table.latency["depth_moves"]] == ["model.6.m.1"]
    assert table.latency["depth_moves"][0]["importance"] == 0.0 and table.latency["depth_moves"][0]["price"] == 0.0
    assert table.channels_after == table.channels_before  # the free block alone met the goal: no channel went
    assert len(pruned.model[6].m) == len(model.model[6].m) - 1 and pruned.yaml["repeats"]["6"] == 2
    assert table.latency["predicted_ms"] == pytest.approx(full - block_ms)
    assert "residual blocks removed by the search: model.6.m.1" in table.summary_line()
    with torch.no_grad():  # the block was free: the outputs are the model's
        x = torch.rand(1, 3, IMGSZ, IMGSZ)
        assert torch.allclose(pruned(x)[0], model(x)[0], atol=1e-4)
    width_only = prune_to_latency(model, cfg, pred, constant_timer, iterations=1)[1]
    assert "depth_moves" not in width_only.latency and width_only.channels_after < width_only.channels_before


def test_depth_moves_reach_a_deep_budget_and_reload(tmp_path):
    model = tiny()
    pred = FlopsPredictor(model)
    cfg = PruneConfig(target_latency=0.5 * pred.total_ms(pred.full), imgsz=IMGSZ)
    pruned, table = prune_to_latency(model, cfg, pred, constant_timer, iterations=1, moves=("width", "depth"),
                                     images=torch.rand(2, 3, IMGSZ, IMGSZ))  # fmt: skip
    assert table.latency["predicted_ms"] <= cfg.target_latency + 1e-9
    assert set(table.latency["depth_rate"]) >= {"rate", "output_change", "score_spent"}
    save_checkpoint(tmp_path / "p.pt", pruned, {"imgsz": IMGSZ})
    again, _ = load_model(tmp_path / "p.pt")
    assert sum(len(m.m) for m in again.model if hasattr(m, "m") and isinstance(m.m, torch.nn.Sequential)) == \
        sum(len(m.m) for m in pruned.model if hasattr(m, "m") and isinstance(m.m, torch.nn.Sequential))


def test_latency_moves_and_the_floor_with_blocks_in_one_line():
    assert parse_moves("width") == ("width",) and parse_moves("depth,width") == ("width", "depth")
    for bad in ("depth", "width,height", ""):
        with pytest.raises(PruneError, match="--latency-moves"):
            parse_moves(bad)
    model = tiny()
    pred = FlopsPredictor(model)
    cfg = PruneConfig(target_latency=0.01, imgsz=IMGSZ)
    with pytest.raises(PruneError, match=r"^target_latency 0.01 ms: below the floor [0-9.]+ ms .* with all 7 "
                                         r"removable residual blocks removed$"):  # fmt: skip
        prune_to_latency(model, cfg, pred, constant_timer, moves=("width", "depth"),
                         images=torch.rand(1, 3, IMGSZ, IMGSZ))


def test_pipeline_impossible_budget_is_one_line_before_the_run_folder(tmp_path, data, flat_table):
    weights = tmp_path / "w.pt"
    save_checkpoint(weights, tiny(), {"imgsz": IMGSZ})
    runs = tmp_path / "runs"
    opt = PipelineOptions(data=str(data), weights=str(weights), imgsz=IMGSZ, target_flops=None, target_latency=1e-4,
                          latency_table=str(tmp_path / "table.json"), project=str(runs))  # fmt: skip
    with pytest.raises(PipelineError, match=r"^--target-latency 0.0001 ms: below the floor [0-9.]+ ms the layers "
                                            r"can reach at --min-keep 0.1 \(--round-to 8\); predicted with ") as e:
        run_pipeline(opt, log=lambda m: None)
    assert "\n" not in str(e.value) and not runs.exists() and flat_table == [1]
    for kw, flag in (({"rounds": 2, "finetune_epochs": 2}, "--rounds"), ({"latency_moves": "depth"}, "--latency-moves"),
                     ({"latency_tolerance": 1.5}, "--latency-tolerance"), ({"target_flops": 0.5}, "exactly one")):
        with pytest.raises(PipelineError, match=re.escape(flag)):
            PipelineOptions(**{**opt.__dict__, **kw}).validate()
    check = pl.check_budget(load_model(weights)[0], opt.prune_config({"target_latency": 10.0}), 1,
                            opt.latency_table, log=lambda m: None)  # a budget above the full model: nothing to cut
    assert check["floor_ms"] <= check["full_ms"] < 10.0 and check["flops_equivalent"] == 1.0 and flat_table == [1]


def test_budget_in_the_prune_key_and_the_targeted_sparse_stage_aims_at_its_flops(tmp_path, monkeypatch):
    run, calls = stubbed_pipeline(tmp_path, monkeypatch)
    monkeypatch.setattr(Pipeline, "_latency_target", lambda self: {"target_flops": 0.6})
    run(target_flops=None, target_latency=12.0)
    sparse = dict(calls)["sparse"]["sparsity_target"]
    assert sparse["target_flops"] == 0.6 and sparse["min_keep"] == 0.1
    state = (tmp_path / "run" / "pipeline.json").read_text()
    assert '"target_latency": 12.0' in state and '"latency_moves": "width"' in state
    logs = run(target_flops=None, target_latency=12.0, latency_moves="width,depth")
    assert "[prune] inputs changed since the last run: redoing this stage (and the ones after it)" in logs
    assert "[sparse] inputs changed" not in " ".join(logs)  # depth moves only change the cut
    logs = run(target_flops=None, target_latency=11.0)
    assert "[sparse] inputs changed since the last run: redoing this stage (and the ones after it)" in logs


def test_pipeline_prune_stage_cuts_to_the_budget(tmp_path, data, monkeypatch):
    model = tiny()
    weights = tmp_path / "w.pt"
    save_checkpoint(weights, model, {"imgsz": IMGSZ})
    pred = FlopsPredictor(model)

    def fake_tools(m, config, threads=1, path=None, log=print, runs=30):
        return pred, constant_timer, {"table": "fake", "threads": threads}

    monkeypatch.setattr(pl, "latency_tools", fake_tools)
    opt = PipelineOptions(data=str(data), weights=str(weights), imgsz=IMGSZ, target_flops=None, reconstruct=0,
                          target_latency=0.6 * pred.total_ms(pred.full), latency_moves="width,depth",
                          latency_tolerance=0.5, sparse_epochs=0, project=str(tmp_path / "runs"))  # fmt: skip
    pipe = Pipeline(opt, tmp_path / "run", log=lambda m: None)
    out = pipe._prune(str(weights), str(weights))
    _, meta = load_model(out["weights"])
    lat = meta["history"][-1]["latency"]
    assert lat["budget_ms"] == pytest.approx(opt.target_latency) and lat["table"] == "fake"
    assert lat["predicted_ms"] <= opt.target_latency + 1e-9 and "depth_moves" in lat
    stated = pipe._budget_extras()["latency_budget"]  # what the report stage hands the report to state
    assert stated["target_ms"] == pytest.approx(opt.target_latency) and "iterations" not in stated
