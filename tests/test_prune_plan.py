"""Selection: one global threshold, coupled channels judged together, floors, rounding, targets, errors, table."""

from __future__ import annotations

import json
import math
import warnings

import pytest
import torch

from prune import PruneConfig, PruneError, PruneWarning, apply_plan, build_graph, plan_pruning, prune_model
from tests.zoo import ZOO, randomize_bn
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.flops import count_gflops, count_params

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::prune.PruneWarning")]


@pytest.fixture(scope="module")
def tiny(single_thread):
    model = randomize_bn(ZOO["yolov5n"].build(), seed=5).eval()
    return model, build_graph(model, 128)


def test_one_global_threshold_over_raw_gammas(tiny):
    model, graph = tiny
    plan = plan_pruning(graph, PruneConfig(ratio=0.4, min_keep=0.0, round_to=1, imgsz=128))
    t = plan.table
    assert 0.39 < t.removed_fraction < 0.41
    for r in t.rows:  # nothing kept below the threshold, nothing removed above it
        assert math.isnan(r.max_removed_gamma) or r.max_removed_gamma <= t.threshold
        assert r.min_kept_gamma >= t.threshold
    assert t.importance == "slim" and t.rows[0].min_kept_score == t.rows[0].min_kept_gamma


def test_coupled_channel_goes_only_if_every_member_allows():
    model = randomize_bn(ZOO["residual"].build(), seed=6).eval()
    cv1, m0, m1 = model.model[1].cv1.bn, model.model[1].m[0].cv2.bn, model.model[1].m[1].cv2.bn
    for bn in (cv1, m0, m1):
        bn.weight.data[:] = 1.0
        bn.weight.data[:4] = 1e-3  # channels 0-3 small everywhere: removable
    m1.weight.data[0] = 5.0  # channel 0 is small in two members but large in the third
    plan = plan_pruning(model, PruneConfig(ratio=0.04, min_keep=0.0, round_to=1, imgsz=64))
    g = next(p for p in plan.groups if p.info.name == "model.1.cv1.conv")
    assert 0 not in g.removed.tolist() and {1, 2, 3} <= set(g.removed.tolist())
    assert abs(g.info.gamma[0] - 5.0) < 1e-6


def test_floor_and_rounding(tiny):
    model, graph = tiny
    plan = plan_pruning(graph, PruneConfig(ratio=0.95, min_keep=0.1, round_to=1, imgsz=128))
    for r in plan.table.rows:
        assert r.after >= max(1, math.ceil(0.1 * r.before))
    plan = plan_pruning(graph, PruneConfig(ratio=0.95, min_keep=0.0, round_to=1, imgsz=128))
    assert min(r.after for r in plan.table.rows) == 1  # a layer is never emptied
    plan = plan_pruning(graph, PruneConfig(ratio=0.5, round_to=8, imgsz=128))
    for r in plan.table.rows:
        assert r.after == r.before or (r.after % 8 == 0 and 0 < r.after <= r.before)
    plan = plan_pruning(graph, PruneConfig(ratio=0.5, min_keep=3, round_to=1, imgsz=128))
    assert min(r.after for r in plan.table.rows) >= 3


@pytest.mark.parametrize("metric", ["flops", "params"])
def test_target_is_met_from_below(tiny, metric):
    model, graph = tiny
    cfg = PruneConfig(imgsz=128, round_to=1, **{f"target_{metric}": 0.5})
    pruned, table = prune_model(model, cfg, graph=graph)
    kept = table.flops_kept if metric == "flops" else table.params_kept
    assert 0.47 <= kept <= 0.5, kept
    # the table's accounting is what yolo.flops measures on the sliced model
    assert count_gflops(pruned, 128) == pytest.approx(table.gflops_after, rel=1e-6)
    assert count_params(pruned) == table.params_after
    assert count_gflops(model, 128) == pytest.approx(table.gflops_before, rel=1e-6)


def test_target_with_default_rounding_stays_at_or_below(tiny):
    model, graph = tiny
    table = plan_pruning(graph, PruneConfig(target_flops=0.6, imgsz=128)).table
    assert table.flops_kept <= 0.6


def test_impossible_target_is_an_error(tiny):
    model, graph = tiny
    with pytest.raises(PruneError, match="cannot be met"):
        plan_pruning(graph, PruneConfig(target_flops=0.02, imgsz=128))


@pytest.mark.parametrize(
    "kwargs, match",
    [({"ratio": 1.0}, "outside"), ({"ratio": -0.1}, "outside"), ({}, "exactly one"),
     ({"ratio": 0.2, "target_flops": 0.5}, "exactly one"), ({"target_params": 1.5}, "KEPT"),
     ({"ratio": 0.2, "importance": "hessian"}, "importance"), ({"ratio": 0.2, "compensate": "x"}, "compensate"),
     ({"ratio": 0.2, "round_to": 0}, "round_to")],
)  # fmt: skip
def test_bad_settings_are_one_line_errors(kwargs, match):
    with pytest.raises(PruneError, match=match) as e:
        PruneConfig(**kwargs).validate()
    assert "\n" not in str(e.value)


def test_ignore_patterns(tiny):
    model, _ = tiny
    plan = plan_pruning(model, PruneConfig(ratio=0.5, round_to=1, imgsz=128, ignore=("model.0.*", "model.4.cv1*")))
    pruned = apply_plan(model, plan)
    assert pruned.model[0].conv.out_channels == model.model[0].conv.out_channels
    assert pruned.model[4].m[1].cv2.conv.out_channels == model.model[4].m[1].cv2.conv.out_channels  # coupled
    assert any("ignore" in why for _, why in plan.table.protected)
    with pytest.raises(PruneError, match="matches no layer"):
        build_graph(model, 128, ignore=("model.99.*",))


@pytest.mark.parametrize("importance", ["l1", "l2"])
def test_filter_magnitude_importance(tiny, importance):
    model, graph = tiny
    pruned, table = prune_model(model, PruneConfig(ratio=0.3, importance=importance, imgsz=128), graph=graph)
    assert table.importance == importance and table.channels_after < table.channels_before
    with torch.no_grad():
        assert pruned(torch.zeros(1, 3, 64, 64))[0].shape[-1] == 8


def test_warning_when_large_gammas_go(tiny):
    model, graph = tiny  # gammas in [0.5, 1.5): nothing near zero
    with warnings.catch_warnings(record=True) as w:
        warnings.simplefilter("always")
        _, table = prune_model(model, PruneConfig(ratio=0.3, imgsz=128), graph=graph)
    assert table.warnings and "sparse" in table.warnings[0].lower() and "fine-tune" in table.warnings[0]
    assert any(issubclass(x.category, PruneWarning) for x in w)
    sparse = ZOO["yolov5n"].build().eval()
    g = torch.Generator().manual_seed(0)
    for m in sparse.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.weight.data = torch.where(torch.rand(m.num_features, generator=g) < 0.5, 1e-3, 1.0)
    table = plan_pruning(sparse, PruneConfig(ratio=0.3, imgsz=128)).table
    assert table.warnings == [] and table.max_removed_gamma <= 1e-3 + 1e-9


def test_table_outputs(tiny, tmp_path):
    model, graph = tiny
    t = plan_pruning(graph, PruneConfig(ratio=0.3, imgsz=128)).table
    rows = t.to_rows()
    assert len(rows) == len(graph.groups) and {"layer", "name", "type", "before", "after", "removed_pct",
                                                "min_kept_gamma"} <= set(rows[0])  # fmt: skip
    assert rows[0]["layer"] == 0 and rows[0]["type"] == "Conv"
    csv_text = t.to_csv(tmp_path / "t.csv").read_text().splitlines()
    assert csv_text[0].startswith("layer,name,type") and len(csv_text) == len(rows) + 1
    d = json.loads(t.to_json(tmp_path / "t.json").read_text())
    assert d["totals"]["gflops_before"] > d["totals"]["gflops_after"] and d["totals"]["threshold"] == t.threshold
    text = t.render_text()
    assert "global threshold" in text and "GFLOPs" in text and "model.4.cv1.conv" in text
    s = t.summary()
    assert s["op"] == "prune" and s["params_after"] == t.params_after
    assert "ratio 0.3" in t.summary_line()
