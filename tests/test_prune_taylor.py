"""Taylor importance: channels ranked by the detection loss's first-order change on labelled calibration images,
for checkpoints whose |gamma| was never made meaningful by sparse training."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import yaml

from prune import PruneConfig, PruneError, build_graph, plan_pruning, prune_model
from prune.calib import calib_loader
from prune.importance import taylor_scores
from tests.zoo import randomize_bn, tiny_official
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.model import build_model
from yolo.synthetic import make_synthetic_dataset

pytestmark = pytest.mark.usefixtures("single_thread")
IMGSZ = 96


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    data = make_synthetic_dataset(tmp_path_factory.mktemp("taylor") / "data", n_train=8, n_val=2, img_size=IMGSZ)
    nc = len(yaml.safe_load(data.read_text())["names"])
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = randomize_bn(build_model(tiny_official("yolov5n", nc=nc)), seed=1).eval()
    return model, data, calib_loader(data, IMGSZ, 8, batch_size=8)


def loss_on(model, loader) -> float:
    from yolo.hyp import load_hyp
    from yolo.loss import YoloLoss, scale_loss_gains

    d = model.model[-1]
    compute = YoloLoss(model, scale_loss_gains(load_hyp(None), d.nl, d.nc, IMGSZ))
    with torch.no_grad():
        return sum(float(compute(model.eval()(b[0].float() / 255)[1], b[1])[0]) for b in loader)


def test_scores_follow_the_loss_change_of_removing_each_channel(setup):
    """One batch: sqrt(score) is |gamma * dL/dgamma|, the first-order change of zeroing that gamma. Over the
    channels of single-BatchNorm groups it must rank like the change measured by zeroing each gamma."""
    model, _, loader = setup
    graph = build_graph(model, IMGSZ)
    scores = taylor_scores(graph, loader)
    base = loss_on(model, loader)
    predicted, measured = [], []
    for g, s in zip(graph.groups, scores):
        bns = [m for m in g.members if m.kind == "bn"]
        if len(bns) != 1:
            continue
        bn = model.get_submodule(bns[0].name)
        for root in range(0, g.channels, max(1, g.channels // 2)):
            i = int(bns[0].idxs[list(bns[0].root).index(root)])
            keep = bn.weight.data[i].item()
            bn.weight.data[i] = 0.0
            measured.append(abs(loss_on(model, loader) - base))
            bn.weight.data[i] = keep
            predicted.append(float(np.sqrt(s[root])))
    assert len(predicted) >= 20
    rank = lambda v: np.argsort(np.argsort(v))  # noqa: E731
    rho = np.corrcoef(rank(predicted), rank(measured))[0, 1]
    assert rho > 0.6, rho
    assert loss_on(model, loader) == pytest.approx(base)  # every gamma put back


def test_the_cut_removes_the_lowest_scores_and_leaves_the_input_model_alone(setup):
    model, _, loader = setup
    before = {k: v.clone() for k, v in model.state_dict().items()}
    graph = build_graph(model, IMGSZ)
    plan = plan_pruning(graph, PruneConfig(ratio=0.3, importance="taylor", imgsz=IMGSZ, round_to=1),
                        calib_loader=loader)  # fmt: skip
    scores = taylor_scores(graph, loader)
    for gp, s in zip(plan.groups, scores):
        if len(gp.removed):
            kept = np.setdiff1d(np.arange(len(s)), gp.removed)
            assert s[gp.removed].max() <= s[kept].min()
    assert plan.table.importance == "taylor" and plan.table.channels_after < plan.table.channels_before
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all(p.grad is None for p in model.parameters())


def test_taylor_needs_labelled_images_of_the_models_classes(setup):
    model, _, _ = setup
    with pytest.raises(PruneError, match="taylor.*calibration images"):
        plan_pruning(model, PruneConfig(ratio=0.2, importance="taylor", imgsz=IMGSZ))
    with pytest.raises(PruneError, match="calibration images"):
        prune_model(model, PruneConfig(ratio=0.2, importance="taylor", imgsz=IMGSZ))
    from tests.zoo import ZOO

    with pytest.raises(PruneError, match="taylor' needs a YOLOv5 detection model"):
        plan_pruning(ZOO["unknown_module"].build(), PruneConfig(ratio=0.2, importance="taylor", imgsz=64),
                     calib_loader=setup[2])  # fmt: skip
    other = setup[1].parent / "one_class_more.yaml"
    cfg = yaml.safe_load(setup[1].read_text())
    cfg["names"] = list(cfg["names"].values()) + ["extra"]
    cfg["nc"] = len(cfg["names"])
    other.write_text(yaml.safe_dump(cfg))
    with pytest.raises(PruneError) as e:
        plan_pruning(model, PruneConfig(ratio=0.2, importance="taylor", imgsz=IMGSZ),
                     calib_loader=calib_loader(other, IMGSZ, 4, batch_size=4))  # fmt: skip
    msg = str(e.value)
    assert "\n" not in msg and f"predicts {model.nc} classes, the data has {model.nc + 1}" in msg
