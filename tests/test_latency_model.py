"""The latency model of issue #27: the per-layer table's key, monotone predictions, latency budgets on the prune
command (an impossible one is one line and writes nothing; a reachable one runs end to end). Timing figures are
the bench's business (bench/latency_model.py): here only their sanity is checked."""

from __future__ import annotations

import argparse
import json

import numpy as np
import pytest

import prune.cli as prune_cli
import reports.layer_latency as ll
from pipeline.latency import calibration_models, latency_tools
from prune import PruneConfig, PruneError, prune_to_latency
from prune.cost import CostModel
from prune.graph import build_graph
from tests.latency_fakes import fake_flat_profile
from tests.zoo import ZOO, randomize_bn
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.checkpoint import load_model, save_checkpoint

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::prune.PruneWarning")]
IMGSZ = 64


@pytest.fixture(scope="module")
def weights(tmp_path_factory, single_thread):
    model = randomize_bn(ZOO["yolov5n"].build(), seed=7).eval()
    path = tmp_path_factory.mktemp("w") / "tiny.pt"
    save_checkpoint(path, model, {"imgsz": IMGSZ})
    return path


@pytest.fixture(scope="module")
def table_file(weights, tmp_path_factory):
    """One real profile of the tiny model at 64 px (a few seconds), shared by the tests that need timings."""
    model, _ = load_model(weights)
    path = tmp_path_factory.mktemp("t") / "table.json"
    ll.load_or_profile(model, IMGSZ, 1, 8, path, runs=3, model_runs=5, log=lambda m: None)
    return path


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    prune_cli.register(p.add_subparsers())
    args = p.parse_args(list(argv))
    args.latency_tools = latency_tools  # what prune.py's dispatcher sets
    return args


def test_width_grid_rounds_up_and_keeps_the_full_width():
    assert ll.width_grid(64, 8) == [8, 16, 24, 32, 40, 48, 56, 64]
    assert ll.width_grid(20, 8) == [8, 16, 20]
    assert ll.width_grid(3, 8) == [3]


def test_table_key_invalidates_on_cpu_runtime_threads_and_size(weights, tmp_path, monkeypatch):
    model, _ = load_model(weights)
    built = fake_flat_profile(monkeypatch)
    path, logs = tmp_path / "t.json", []

    def load(imgsz=IMGSZ, threads=1):
        logs.clear()
        return ll.load_or_profile(model, imgsz, threads, 8, path, log=logs.append)

    load()
    load()
    assert len(built) == 1 and "key matches, reused" in logs[-1]
    real_cpu = ll.cpu_info()
    monkeypatch.setattr(ll, "cpu_info", lambda: {**real_cpu, "model": "Some Other CPU", "flags": ["avx512f"]})
    load()
    assert len(built) == 2 and "cpu " in logs[-1] and "Some Other CPU" in logs[-1] and "cpu_flags" in logs[-1]
    monkeypatch.setattr(ll.ort, "__version__", "0.0.1")
    load()
    assert len(built) == 3 and "onnxruntime" in logs[-1]
    load(threads=2)
    assert len(built) == 4 and "threads 1 -> 2" in logs[-1]
    load(imgsz=96)
    assert len(built) == 5 and "imgsz [64, 64] -> [96, 96]" in logs[-1] and "arch" in logs[-1]
    load(imgsz=96)
    assert len(built) == 5
    assert json.loads(path.read_text())["key"]["imgsz"] == [96, 96]


def test_prediction_is_monotone_in_widths(weights, table_file):
    model, _ = load_model(weights)
    table = ll.LatencyTable.from_json(table_file)
    pred = ll.TablePredictor(table)
    cost = CostModel(build_graph(model, IMGSZ))
    sizes = np.array([g.channels for g in build_graph(model, IMGSZ).groups])
    rng = np.random.default_rng(0)
    for _ in range(20):  # removing more channels from any groups never predicts a slower model
        a = rng.integers(0, sizes)
        b = np.minimum(sizes - 1, a + rng.integers(0, 3, len(sizes)) * (rng.random(len(sizes)) < 0.5))
        assert pred.total_ms(cost.widths(b)) <= pred.total_ms(cost.widths(a)) + 1e-9
    for t in table.layers.values():
        grid = np.asarray(t.ms)
        assert (np.diff(grid, axis=0) >= 0).all() and (np.diff(grid, axis=1) >= 0).all()
        assert t.predict(t.cin[0] / 2, t.cout[0] / 2) <= t.predict(t.cin[-1], t.cout[-1])


def test_check_prediction_is_sane(weights, table_file):
    model, _ = load_model(weights)
    table = ll.LatencyTable.from_json(table_file)
    res = ll.check_prediction(table, {"full": model}, IMGSZ, 1, runs=5)["full"]
    assert res["predicted_ms"] > 0 and res["measured_ms"] > 0 and np.isfinite(res["error_pct"])


def test_impossible_budget_is_one_line_and_writes_nothing(weights, table_file, tmp_path):
    args = parse("prune", "--weights", str(weights), "--target-latency", "0.0001", "--latency-table",
                 str(table_file), "--project", str(tmp_path / "runs"))  # fmt: skip
    before = table_file.read_bytes()
    with pytest.raises(PruneError, match=r"^--target-latency 0.0001 ms: below the floor [0-9.]+ ms the layers can "
                                         r"reach at --min-keep 0.1 \(--round-to 8\)$") as e:  # fmt: skip
        args.func(args)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists() and table_file.read_bytes() == before


def test_library_needs_a_predictor_and_refuses_bad_budgets(weights):
    model, _ = load_model(weights)
    with pytest.raises(PruneError, match="target_latency -1.0 must be > 0"):
        PruneConfig(target_latency=-1.0)
    with pytest.raises(PruneError, match="target_speedup 0.5 must be > 1"):
        PruneConfig(target_speedup=0.5)
    with pytest.raises(PruneError, match="exactly one"):
        PruneConfig(target_latency=5.0, target_flops=0.5)
    with pytest.raises(PruneError, match="--target-speedup 0.5"):
        PruneConfig.from_flags(target_speedup=0.5)
    from prune import prune_model

    with pytest.raises(PruneError, match="prune_to_latency"):
        prune_model(model, PruneConfig(target_latency=5.0, imgsz=IMGSZ))


def test_target_latency_runs_end_to_end(weights, table_file, tmp_path):
    model, _ = load_model(weights)
    pred = ll.TablePredictor(ll.LatencyTable.from_json(table_file))
    floor = calibration_models(model, PruneConfig(imgsz=IMGSZ))["floor"]  # the defaults: --min-keep 0.1, round 8
    full, least = pred.total_ms(ll.model_widths(model)), pred.total_ms(ll.model_widths(floor))
    budget = (full + least) / 2  # reachable whatever this machine's overheads (at 64 px they are most of the time)
    args = parse("prune", "--weights", str(weights), "--target-latency", f"{budget:.4f}", "--latency-table",
                 str(table_file), "--latency-tolerance", "0.9", "--project", str(tmp_path / "runs"))
    out = args.func(args)
    lat = out["table"].latency
    assert {"budget_ms", "predicted_ms", "measured_ms", "measured_before_ms", "iterations", "table"} <= set(lat)
    assert lat["predicted_ms"] <= lat["goal_ms"] + 1e-9 and lat["measured_ms"] > 0 and lat["threads"] == 1
    saved = json.loads((tmp_path / "runs" / "exp" / "prune_table.json").read_text())
    assert saved["totals"]["latency"]["budget_ms"] == pytest.approx(budget, rel=1e-3)
    assert any(r["ms_before"] is not None and r["ms_after"] <= r["ms_before"] + 1e-9 for r in saved["rows"])
    pruned, meta = load_model(out["weights"])
    assert meta["history"][-1]["latency"]["measured_ms"] == pytest.approx(lat["measured_ms"])


def test_target_speedup_through_the_library(weights, table_file):
    model, _ = load_model(weights)
    pred = ll.TablePredictor(ll.LatencyTable.from_json(table_file))
    calls: list[list[str]] = []

    def measure(models):  # a fake timer: the predictor's figure, so the loop's bookkeeping is what is tested
        calls.append(list(models))
        return {n: pred.total_ms(ll.model_widths(m)) for n, m in models.items()}

    cfg = PruneConfig(target_speedup=1.25, imgsz=IMGSZ, round_to=1)
    pruned, table = prune_to_latency(model, cfg, pred, measure, tolerance=0.05)
    assert calls[0] == ["baseline"] and calls[1] == ["baseline", "pruned"]
    lat = table.latency
    assert lat["budget_ms"] == pytest.approx(lat["measured_before_ms"] / 1.25)
    assert lat["within_tolerance"] and abs(lat["error_pct"]) <= 5.0


def test_an_absolute_budget_follows_the_machines_pace_between_rounds(weights, table_file):
    """A table that undercounts this model by 20%, and a machine that runs 20% faster in round 2 than in round 1:
    the budget in ms follows the baseline timed beside each cut, so round 2 lands on it (ignoring the pace, its
    cut would look 20% under budget and the next goal would overshoot the other way)."""
    model, _ = load_model(weights)
    pred = ll.TablePredictor(ll.LatencyTable.from_json(table_file))
    paces = iter([1.0, 0.8, 1.0])

    def measure(models):
        pace = next(paces)
        return {n: pred.total_ms(ll.model_widths(m)) * (1.0 if n == "baseline" else 1.2) * pace
                for n, m in models.items()}  # fmt: skip

    full = pred.total_ms(ll.model_widths(model))
    floor = pred.total_ms(ll.model_widths(calibration_models(model, PruneConfig(imgsz=IMGSZ))["floor"]))
    target = floor + 0.6 * (full - floor)
    cfg = PruneConfig(target_latency=target, imgsz=IMGSZ, round_to=1)
    _, table = prune_to_latency(model, cfg, pred, measure, tolerance=0.05, iterations=2)
    lat = table.latency
    assert [r["pace"] for r in lat["iterations"]] == pytest.approx([1.0, 0.8])
    assert lat["target_ms"] == pytest.approx(target) and lat["budget_ms"] == pytest.approx(0.8 * target)
    assert lat["within_tolerance"] and abs(lat["error_pct"]) <= 5.0
    assert f"budget {target:.2f} ms ({0.8 * target:.2f} at the machine's pace" in table.latency_line()


def test_the_fitted_rest_never_predicts_a_negative_latency():
    """One timing below the conv sum (the tiny model at 64 px, yolov5n at 640) scales the convs instead of
    subtracting a constant; s, a, b >= 0 always, so a narrower model never predicts <= 0 ms."""
    layer = ll.LayerTable(cin=[1, 8], cout=[1, 8], ms=[[0.1, 0.8], [0.8, 6.4]], out_hw=4)
    table = ll.LatencyTable({}, {"c": layer})
    full, narrow = {"c": (8, 8)}, {"c": (1, 1)}
    ll.fit_rest(table, [(full, 3.2)])  # the whole model: half the conv sum
    assert (table.conv_scale, table.rest_a, table.rest_b) == pytest.approx((0.5, 0.0, 0.0))
    pred = ll.TablePredictor(table)
    assert pred.total_ms(full) == pytest.approx(3.2) and pred.total_ms(narrow) == pytest.approx(0.05)
    ll.fit_rest(table, [(full, 7.4)])  # the convs undercount: the rest is the difference
    assert (table.conv_scale, table.rest_a) == pytest.approx((1.0, 1.0))
    ll.fit_rest(table, [(full, 5.0), (narrow, 1.1)])  # two timings pin slope and intercept exactly
    assert table.conv_scale == pytest.approx(3.9 / 6.3) and table.rest_a == pytest.approx(1.1 - 0.1 * 3.9 / 6.3)
    ll.fit_rest(table, [(full, 5.0), (narrow, 6.0)])  # a slope < 0 is not physical: the best fit with s, a >= 0
    assert min(table.conv_scale, table.rest_a, table.rest_b) >= 0 and table.rest_a > 0


def test_a_reused_table_is_re_anchored_on_this_sessions_speed(weights, tmp_path, monkeypatch):
    """The same key on a machine now running 10% slower: the stored whole-model timings are taken again and every
    prediction grows 10%; the key and the written file stay as they were. 3x slower is said to be suspicious. A
    table without stored timings is used as it is, and says so."""
    model, _ = load_model(weights)
    fake_flat_profile(monkeypatch)
    path, logs = tmp_path / "t.json", []
    table, _ = ll.load_or_profile(model, IMGSZ, 1, 8, path, log=logs.append)
    widths = ll.model_widths(model)
    base = ll.TablePredictor(table).total_ms(widths)
    again, _ = ll.load_or_profile(model, IMGSZ, 1, 8, path, log=logs.append)
    assert again.level == 1.0 and "not re-anchored" in logs[-1]
    table.measured = {"full": 2.0, "floor": 1.0}
    table.to_json(path)
    written = path.read_bytes()
    timed: list[list[str]] = []

    def slower(factor):
        def measure(models, imgsz, threads, runs=30):
            timed.append(list(models))
            return {n: factor * table.measured[n] for n in models}
        return measure

    monkeypatch.setattr(ll, "measure_models", slower(1.1))
    again, _ = ll.load_or_profile(model, IMGSZ, 1, 8, path, log=logs.append,
                                  calibration=lambda: {"floor": model, "half": model})  # fmt: skip
    assert timed == [["full", "floor"]]  # what the table stored, timed together again; nothing else
    assert again.level == pytest.approx(1.1) and "predictions x1.100" in logs[-1] and "another job" not in logs[-1]
    assert ll.TablePredictor(again).total_ms(widths) == pytest.approx(1.1 * base)
    assert path.read_bytes() == written
    monkeypatch.setattr(ll, "measure_models", slower(3.0))
    ll.load_or_profile(model, IMGSZ, 1, 8, path, log=logs.append)
    assert timed[-1] == ["full"] and "predictions x3.000" in logs[-1] and "another job running beside" in logs[-1]
