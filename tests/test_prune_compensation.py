"""Compensation: removing channels whose gamma is exactly 0 leaves the detector's outputs unchanged (away from
image borders, where zero padding made the removed constants contribute less), through residual adds, concats,
upsampling, max-pooling (SPPF/SPP) and BottleneckCSP's BN-after-concat."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune import PruneConfig, apply_plan, build_graph, plan_pruning
from prune.apply import removals
from tests.zoo import ZOO, randomize_bn, zero_removed_gammas
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)

pytestmark = pytest.mark.usefixtures("single_thread")


def interior(model: nn.Module, x: torch.Tensor, margin: float = 0.25) -> list[torch.Tensor]:
    """Eval outputs (decoded boxes per level, raw maps) with `margin` of each side's cells cropped."""
    with torch.no_grad():
        decoded, raw = model(x)
    out, start = [], 0
    for r in raw:
        bs, na, ny, nx, no = r.shape
        d = decoded[:, start : start + na * ny * nx].reshape(bs, na, ny, nx, no)
        start += na * ny * nx
        cy, cx = max(1, int(ny * margin)), max(1, int(nx * margin))
        out += [d[:, :, cy : ny - cy, cx : nx - cx], r[:, :, cy : ny - cy, cx : nx - cx]]
    return out


def max_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def prepared(name: str, ratio: float = 0.4):
    model = randomize_bn(ZOO[name].build(), seed=3).eval()
    plan = plan_pruning(model, PruneConfig(ratio=ratio, round_to=1, imgsz=ZOO[name].imgsz))
    zero_removed_gammas(model, plan)
    return model, plan


# Zero padding makes a removed constant channel contribute less on border cells, and every further 3x3 conv or
# max-pool spreads that difference one cell inwards: deep levels (P5 after SPPF) need a large image and margin.
# Compared in float64 so that float32 rounding of decoded pixel coordinates (ulp 6e-5 near 1000) is not counted.
@pytest.mark.parametrize(
    "name, size, margin",
    [("yolov5n", 768, 0.35), ("csp_focus_spp", 256, 0.25), ("same_tensor_twice", 128, 0.25), ("sppf", 256, 0.3),
     ("concat_branches", 128, 0.25), ("residual", 128, 0.25), ("depthwise", 128, 0.25)],
)  # fmt: skip
def test_zero_gamma_channels_are_removed_losslessly(name, size, margin):
    model, plan = prepared(name)
    assert plan.removed_channels > 0
    pruned = apply_plan(model, plan).double()
    uncompensated = apply_plan(model, plan, compensate="none").double()
    x = torch.rand(1, 3, size, size, dtype=torch.float64)
    ref = interior(model.double(), x, margin)
    assert max_err(ref, interior(pruned, x, margin)) < 1e-4
    assert max_err(ref, interior(uncompensated, x, margin)) > 1e-2  # the constants mattered


def test_mean_compensation_matches_beta_on_constant_channels():
    model, plan = prepared("csp_focus_spp")
    loader = [(torch.randint(0, 255, (2, 3, 128, 128), dtype=torch.uint8),) for _ in range(2)]
    x = torch.rand(1, 3, 256, 256, dtype=torch.float64)
    pruned = apply_plan(model, plan, compensate="mean", calib_loader=loader).double()
    assert max_err(interior(model.double(), x), interior(pruned, x)) < 1e-4


def test_mean_compensation_needs_images():
    from prune import PruneError

    model, plan = prepared("residual")
    with pytest.raises(PruneError, match="calibration images"):
        apply_plan(model, plan, compensate="mean")


def test_mean_compensation_beats_none_on_small_gammas():
    """Channels with small but non-zero gammas: folding their mean input keeps the outputs closer."""
    model = randomize_bn(ZOO["yolov5n"].build(), seed=4).eval()
    plan = plan_pruning(model, PruneConfig(ratio=0.3, round_to=1, imgsz=128))
    for (name, kind), idx in removals(plan).items():
        if kind == "bn":
            model.get_submodule(name).weight.data[torch.as_tensor(idx)] *= 0.05
    torch.manual_seed(0)
    imgs = [(torch.randint(0, 255, (4, 3, 128, 128), dtype=torch.uint8),)]
    x = imgs[0][0][:2].float() / 255
    ref = interior(model, x)
    errs = {m: max_err(ref, interior(apply_plan(model, plan, compensate=m, calib_loader=imgs), x))
            for m in ("none", "beta", "mean")}  # fmt: skip
    assert errs["mean"] < errs["none"] and errs["beta"] < errs["none"]


def test_recalibration_restores_momentum_and_changes_stats():
    from prune import recalibrate_bn

    model = ZOO["residual"].build().eval()
    bn = model.model[0].bn
    before = bn.running_mean.clone()
    loader = [(torch.randint(0, 255, (2, 3, 64, 64), dtype=torch.uint8),) for _ in range(3)]
    recalibrate_bn(model, loader, 5)
    assert not torch.allclose(before, bn.running_mean)
    assert bn.momentum == 0.03 and not model.training
    graph = build_graph(model, 64)
    plan = plan_pruning(graph, PruneConfig(ratio=0.3, imgsz=64, recalibrate=4))
    pruned = apply_plan(model, plan, calib_loader=loader)
    assert all(m.momentum == 0.03 for m in pruned.modules() if isinstance(m, nn.BatchNorm2d))
