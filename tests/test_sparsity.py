"""Sparse-training stage: the BN-L1 subgradient, layer choice, schedules, statistics and pictures."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from prune.sparse_target import prunable_bn_names
from sparsity.bn_l1 import apply_bn_l1, select_bns, sr_at
from sparsity.callback import SparsityCallback
from sparsity.stats import gamma_histogram, gamma_stats, plot_gamma_histograms
from yolo.model import build_model

TINY = {
    "nc": 3, "depth_multiple": 0.33, "width_multiple": 0.125,
    "anchors": [[10, 13, 16, 30, 33, 23], [30, 61, 62, 45, 59, 119], [116, 90, 156, 198, 373, 326]],
    "backbone": [[-1, 1, "Conv", [64, 6, 2, 2]], [-1, 1, "Conv", [128, 3, 2]], [-1, 1, "C3", [128]],
                 [-1, 1, "Conv", [256, 3, 2]], [-1, 1, "C3", [256, False]], [-1, 1, "Conv", [512, 3, 2]]],
    "head": [[[2, 4, 5], 1, "Detect", ["nc", "anchors"]]],
}


def test_apply_adds_sign_once():
    bn = nn.BatchNorm2d(4)
    with torch.no_grad():
        bn.weight.copy_(torch.tensor([0.5, -0.2, 0.0, 2.0]))
    bn.weight.grad = torch.full((4,), 0.1)
    apply_bn_l1(None, 0.01, [bn])
    assert torch.allclose(bn.weight.grad, torch.tensor([0.11, 0.09, 0.1, 0.11]))
    bn.weight.grad = None
    apply_bn_l1(nn.Sequential(bn), 0.5)  # every BN of the model; a missing grad starts at zero
    assert torch.allclose(bn.weight.grad, torch.tensor([0.5, -0.5, 0.0, 0.5]))
    before = bn.weight.grad.clone()
    apply_bn_l1(None, 0.0, [bn])
    assert torch.equal(bn.weight.grad, before)


def test_layer_choice():
    model = build_model(TINY)
    all_bns = select_bns(model, "all")
    assert len(all_bns) == sum(isinstance(m, nn.BatchNorm2d) for m in model.modules())
    c3_short, c3_plain = model.model[2], model.model[4]
    prunable = select_bns(model, "prunable", prunable_bn_names(model))
    coupled = {id(c3_short.cv1.bn), id(c3_short.m[0].cv2.bn)}  # summed by the shortcut's add: left out
    assert {id(b) for b in all_bns} - {id(b) for b in prunable} == coupled
    assert any(b is c3_plain.cv1.bn for b in prunable)
    with pytest.raises(ValueError, match="all, prunable"):
        select_bns(model, "some")
    with pytest.raises(ValueError, match="needs the names of the prunable BatchNorms"):
        select_bns(model, "prunable")  # which BatchNorms are prunable is the prune stage's answer, from the caller


def test_prunable_leaves_out_repvgg_branch_sums():
    """A RepVGG block adds its 3x3 and 1x1 branches: one branch's zero gamma does not empty the channel."""
    from yolo.repvgg import RepVGG

    model = build_model("yolov5n-repvgg")
    chosen = {id(b) for b in select_bns(model, "prunable", prunable_bn_names(model))}
    blocks = [m for m in model.modules() if isinstance(m, RepVGG)]
    assert blocks
    for b in blocks:
        assert id(b.rbr_dense.bn) not in chosen and id(b.rbr_1x1.bn) not in chosen
    assert any(id(m.bn) in chosen for m in model.modules() if type(m).__name__ == "Conv")  # the plain convs


def test_schedules():
    assert sr_at(0.01, "constant", 7, 10) == 0.01
    assert sr_at(0.01, "linear", 0, 10) == 0.01
    assert sr_at(0.01, "linear", 5, 10) == pytest.approx(0.005)
    assert sr_at(0.01, "linear", 10, 10) == 0.0
    assert sr_at(0.01, "ramp", 0, 10) == 0.0
    assert sr_at(0.01, "ramp", 2.5, 10) == pytest.approx(0.0025)
    assert sr_at(0.01, "ramp", 10, 10) == pytest.approx(0.01)
    with pytest.raises(ValueError, match="constant, linear, ramp"):
        sr_at(0.01, "cosine", 0, 10)
    with pytest.raises(ValueError):
        SparsityCallback(-1.0)


def _train_steps(sr: float, steps: int = 50, seed: int = 0) -> tuple[dict, dict]:
    """SGD on a plain regression loss plus the penalty; returns gamma stats before and after."""
    torch.manual_seed(seed)
    model = build_model(TINY).train()
    with torch.no_grad():  # start gammas spread over (0.02, 0.2) so a few steps can reach 0
        for bn in select_bns(model):
            bn.weight.uniform_(0.02, 0.2)
    before = gamma_stats(model)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.0)
    bns = select_bns(model)
    x = torch.rand(1, 3, 64, 64)
    for _ in range(steps):
        out = model(x)
        loss = sum(o.pow(2).mean() for o in out) * 1e-3
        opt.zero_grad()
        loss.backward()
        apply_bn_l1(None, sr, bns)
        opt.step()
    return before, gamma_stats(model)


def test_penalty_pushes_gammas_to_zero():
    before, after = _train_steps(sr=0.1)
    assert before["lt_1e-2"] == 0.0
    assert after["lt_1e-2"] > 0.9  # lr * sr = 0.005 per step: gammas reach 0 and stay within +-0.005
    assert after["median"] < before["median"] / 5
    _, plain = _train_steps(sr=0.0)
    assert plain["lt_1e-2"] < 0.01


def test_stats_histogram_and_plot(tmp_path):
    model = nn.Sequential(nn.BatchNorm2d(4), nn.BatchNorm2d(6))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([1e-4, 5e-3, 0.5, 1.0]))
        model[1].weight.copy_(torch.tensor([-2e-4, 1.0, 1.0, 1.0, 1.0, 1.0]))
    s = gamma_stats(model)
    assert s["count"] == 10 and s["lt_1e-3"] == pytest.approx(0.2) and s["lt_1e-2"] == pytest.approx(0.3)
    assert s["max"] == 1.0 and s["min"] == pytest.approx(1e-4)
    h = gamma_histogram(model)
    assert sum(h) == 10
    history = [{"epoch": 0, "hist": h}, {"epoch": 1, "hist": gamma_histogram(model)}]
    png = plot_gamma_histograms(history, tmp_path / "g.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert gamma_stats(nn.Linear(2, 2))["count"] == 0
