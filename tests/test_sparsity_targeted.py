"""Targeted sparse training: the penalty follows the prune plan's cut set, and only that set."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from test_sparsity import TINY

from prune.api import PruneConfig, plan_pruning
from prune.sparse_target import TargetedSelection
from sparsity.bn_l1 import select_bns
from sparsity.callback import SparsityCallback
from sparsity.targeted import apply_targeted_l1, parse_target
from yolo.model import build_model


def _model(seed: int = 0):
    torch.manual_seed(seed)
    model = build_model(TINY).train()
    with torch.no_grad():
        for bn in select_bns(model):
            bn.weight.uniform_(0.05, 1.0)
    return model


def test_parse_target():
    assert parse_target("flops=0.5") == {"target_flops": 0.5}
    assert parse_target("params=0.4") == {"target_params": 0.4}
    assert parse_target(" RATIO=0.3") == {"ratio": 0.3}
    with pytest.raises(ValueError, match="flops=F"):
        parse_target("0.5")
    with pytest.raises(ValueError, match="not a number"):
        parse_target("flops=half")


def test_cut_set_is_what_the_prune_plan_removes():
    model = _model()
    cfg = {"target_flops": 0.5, "imgsz": 64, "round_to": 1}
    cut = TargetedSelection(model, cfg).select(model)
    plan = plan_pruning(model, PruneConfig(target_flops=0.5, imgsz=64, round_to=1))
    expected: dict[str, set] = {}
    for gp in plan.groups:
        for m in gp.info.members:
            if m.kind == "bn":
                expected.setdefault(m.name, set()).update(gp.member_removed(m).tolist())
    got = {name: set(np.flatnonzero(mask.numpy()).tolist()) for name, mask in cut.masks.items()}
    assert {k: v for k, v in got.items() if v} == {k: v for k, v in expected.items() if v}
    assert cut.channels == plan.removed_channels > 0
    removed_gammas = [g.info.gamma[g.removed].max() for g in plan.groups if len(g.removed)]
    assert cut.max_gamma == pytest.approx(max(removed_gammas))
    # the shortcut C3's coupled channels: cv1 and the Bottleneck's cv2 BatchNorms are cut together
    c3 = "model.2"
    assert got.get(f"{c3}.cv1.bn", set()) == got.get(f"{c3}.m.0.cv2.bn", set())


def test_cut_set_follows_the_live_gammas():
    model = _model()
    sel = TargetedSelection(model, {"ratio": 0.25, "imgsz": 64, "round_to": 1, "min_keep": 1})
    first = sel.select(model)
    name = next(n for n, m in first.masks.items() if 0 < m.sum() < len(m))
    bn = model.get_submodule(name)
    kept = int(np.flatnonzero(first.masks[name].numpy() == 0)[0])
    with torch.no_grad():
        bn.weight[kept] = 1e-6  # this channel now matters least of all
    second = sel.select(model)
    assert second.masks[name][kept] == 1.0
    assert second.channels == first.channels  # same ratio, same count


def test_penalty_touches_only_the_cut_set():
    model = _model()
    cut = TargetedSelection(model, {"target_flops": 0.6, "imgsz": 64}).select(model)
    for bn in select_bns(model):
        bn.weight.grad = torch.zeros_like(bn.weight)
    apply_targeted_l1(model, 0.1, cut.masks)
    touched = 0
    for name, mask in cut.masks.items():
        grad = model.get_submodule(name).weight.grad
        assert torch.allclose(grad, 0.1 * mask)  # gammas are positive here, so sign = +1 on the cut set
        touched += int(mask.sum())
    assert touched > 0
    untouched = [bn for n, bn in model.named_modules() if isinstance(bn, torch.nn.BatchNorm2d) and n not in cut.masks]
    assert all(torch.count_nonzero(bn.weight.grad) == 0 for bn in untouched)


def test_targeted_training_fades_the_cut_set_and_spares_the_rest():
    """SGD with the callback's per-epoch re-selection: the cut set goes to ~0, channels never cut stay put."""
    model = _model(1)
    cb = SparsityCallback(0.5, selection=TargetedSelection(model, {"target_flops": 0.5, "imgsz": 64, "round_to": 1}))

    class T:  # the parts of Trainer the callback reads
        bare_model, epoch, batch_index, nb, epochs, start_epoch, is_main, run_dir = model, 0, 0, 10, 4, 0, True, None

    cb.on_train_start(T)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.0)
    x = torch.rand(1, 3, 64, 64)
    before = {n: m.weight.detach().clone() for n, m in model.named_modules() if isinstance(m, torch.nn.BatchNorm2d)}
    ever_cut: dict[str, torch.Tensor] = {}
    for epoch in range(4):
        T.epoch = epoch
        cb.on_epoch_start(T)
        for name, mask in cb.cut.masks.items():
            ever_cut[name] = torch.maximum(ever_cut.get(name, mask), mask)
        for _ in range(10):
            loss = sum(o.pow(2).mean() for o in model(x)) * 1e-6  # nearly no task pull: isolate the penalty
            opt.zero_grad()
            loss.backward()
            cb.on_before_optimizer_step(T)
            opt.step()
        row: dict = {}
        cb.on_epoch_end(T, row)  # re-chooses the cut set for the next epoch, as in the trainer
    final = cb.selection.select(model)
    assert final.max_gamma < 0.05  # lr*sr = 0.025 per step, 40 steps: every cut gamma (<= 1) reached ~0
    for name, w0 in before.items():
        w = model.get_submodule(name).weight.detach()
        spared = ever_cut.get(name, torch.zeros_like(w)) == 0  # never in a cut set: no penalty ever
        assert torch.allclose(w[spared], w0[spared], atol=1e-3), name
    assert row["cut_channels"] == final.channels and row["cut_gamma_max"] == pytest.approx(final.max_gamma)


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--sparsity-target", "flops=0.5"], "--sparsity-target needs --sparsity > 0"),
        (["--sparsity", "0.01", "--sparsity-target", "half"], "flops=F"),
    ],
)
def test_finetune_cli_rejects_bad_targets(argv, message, capsys):
    from finetune.cli import parse_args

    with pytest.raises(SystemExit):
        parse_args(["--data", "d.yaml", "--cfg", "yolov5n", *argv])
    assert message in capsys.readouterr().err


def test_finetune_cli_parses_a_target():
    from finetune.cli import parse_args

    args = parse_args(["--data", "d.yaml", "--cfg", "yolov5n", "--sparsity", "0.01", "--sparsity-target", "params=0.4"])
    assert args.sparsity_target == {"target_params": 0.4}
    assert parse_args(["--data", "d.yaml", "--cfg", "yolov5n"]).sparsity_target == {}
