"""The dependency graph on the zoo of tricky models: which channels stay coupled, and pruned models still run."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune import PruneConfig, apply_plan, build_graph, plan_pruning
from tests.zoo import ZOO, randomize_bn
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.modules import Detect

pytestmark = pytest.mark.usefixtures("single_thread")


def outputs(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Every output tensor (Detect in eval mode: the decoded boxes and each raw map)."""
    with torch.no_grad():
        y = model(x)
    if isinstance(y, torch.Tensor):
        return [y]
    decoded, raw = y
    return [decoded, *raw]


def conv_shapes(model: nn.Module) -> dict[str, tuple[int, int]]:
    return {n: (m.out_channels, m.in_channels) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}


@pytest.fixture(scope="module")
def zoo_graphs(single_thread):
    torch.manual_seed(0)
    built = {}
    for name, e in ZOO.items():
        model = randomize_bn(e.build(), seed=1).eval()
        built[name] = (model, build_graph(model, e.imgsz))
    return built


def group_of(graph, producer: str):
    for g in graph.groups:
        if producer in g.producers:
            return g
    raise AssertionError(f"no prunable group produced by {producer}; groups: {[g.producers for g in graph.groups]}")


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_coupling(zoo_graphs, name):
    e, (_, graph) = ZOO[name], zoo_graphs[name]
    for coupled in e.coupled:
        g = group_of(graph, next(iter(coupled)))
        assert set(g.producers) == coupled, f"{name}: {g.producers} != {coupled}"
    for producer, consumers in e.consumers.items():
        g = group_of(graph, producer)
        assert {m.name for m in g.members if m.kind == "in"} == consumers
    for (producer, consumer), mult in e.mult.items():
        g = group_of(graph, producer)
        assert [m.mult for m in g.members if m.name == consumer and m.kind == "in"] == [mult]
    protected = " | ".join(n for n, _ in graph.protected)
    for p in e.protected:
        assert p in protected, f"{name}: {p} should be protected, protected: {graph.protected}"
        assert all(p not in g.producers for g in graph.groups)
    # every conv output channel belongs to at most one prunable group
    seen = [m.name for g in graph.groups for m in g.members if m.kind in ("out", "dw")]
    assert len(seen) == len(set(seen))


@pytest.mark.parametrize("name", list(ZOO))
def test_zoo_pruned_model_runs_with_expected_shapes(zoo_graphs, name):
    e, (model, graph) = ZOO[name], zoo_graphs[name]
    plan = plan_pruning(graph, PruneConfig(ratio=0.5, round_to=1, imgsz=e.imgsz))
    pruned = apply_plan(model, plan)
    x = torch.rand(2, 3, e.imgsz, e.imgsz)
    before, after = outputs(model, x), outputs(pruned, x)
    assert [t.shape for t in before] == [t.shape for t in after]
    assert all(torch.isfinite(t).all() for t in after)
    old, new = conv_shapes(model), conv_shapes(pruned)
    if graph.groups:
        assert sum(o for o, _ in new.values()) < sum(o for o, _ in old.values())
    for names, _ in graph.protected:  # protected producers keep every output channel
        for n in names.split(", "):
            assert new[n][0] == old[n][0]
    for det in (m for m in pruned.modules() if isinstance(m, Detect)):  # outputs stay na*(nc+5)
        assert all(c.out_channels == det.na * det.no for c in det.m)
    assert plan.table.removed_fraction > 0.3 or not graph.groups


@pytest.mark.parametrize("name", ["residual", "csp_focus_spp", "yolov5n", "shufflenet"])
def test_ratio_zero_returns_identical_outputs(zoo_graphs, name):
    e, (model, graph) = ZOO[name], zoo_graphs[name]
    pruned = apply_plan(model, plan_pruning(graph, PruneConfig(ratio=0.0, imgsz=e.imgsz)))
    assert conv_shapes(pruned) == conv_shapes(model)
    x = torch.rand(1, 3, e.imgsz, e.imgsz)
    for a, b in zip(outputs(model, x), outputs(pruned, x)):
        assert torch.equal(a, b)


def test_graph_leaves_caller_model_alone():
    model = ZOO["residual"].build()
    model.train()
    model.model[0].conv.weight.requires_grad_(False)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    plan = plan_pruning(model, PruneConfig(ratio=0.5, round_to=1, imgsz=64))
    pruned = apply_plan(model, plan)
    assert model.training and pruned.training
    assert not model.model[0].conv.weight.requires_grad
    assert not pruned.model[0].conv.weight.requires_grad and pruned.model[1].cv1.conv.weight.requires_grad
    assert all(torch.equal(state[k], v) for k, v in model.state_dict().items())


def test_grouped_conv_is_protected_with_a_reason():
    graph = build_graph(ZOO["grouped"].build(), 64)
    reasons = dict(graph.protected)
    assert "grouped convolution" in reasons["model.1.conv"]


def test_fused_model_is_refused():
    from prune import PruneError

    model = ZOO["detect_head"].build().eval().fuse()
    with pytest.raises(PruneError, match="fused"):
        build_graph(model, 64)
