"""ShuffleNetV2 / YOLOv5-Lite family: blocks, yaml builds, checkpoints, pruning correctness, and one tiny run
(train -> prune -> fine-tune -> ONNX with parity). Tiny widths and 64-128 px throughout."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from torch import nn

from prune import PruneConfig, apply_plan, build_graph, plan_pruning
from tests.zoo import randomize_bn, zero_removed_gammas
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.checkpoint import load_model, save_checkpoint
from yolo.model import ModelConfigError, build_model, load_model_yaml, module_shapes
from yolo.shufflenet import ConvBNReLUMaxPool, ShuffleBlock, channel_shuffle, concat_shuffle

pytestmark = pytest.mark.usefixtures("single_thread")

CONFIGS = ("v5lite-s", "yolov5n-shufflenetv2")


def tiny(name: str, width: float = 0.25, nc: int = 3) -> dict:
    d = load_model_yaml(name)
    d.update(width_multiple=width, nc=nc)
    return d


def raw(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Eval outputs: the decoded boxes and every raw map."""
    with torch.no_grad():
        decoded, maps = model(x)
    return [decoded, *maps]


def interior(model: nn.Module, x: torch.Tensor, margin: float = 0.25) -> list[torch.Tensor]:
    """Raw maps with `margin` of each side's cells cropped (zero padding makes removed constants differ there)."""
    out = []
    for r in raw(model, x)[1:]:
        ny, nx = r.shape[2:4]
        cy, cx = max(1, int(ny * margin)), max(1, int(nx * margin))
        out.append(r[:, :, cy : ny - cy, cx : nx - cx])
    return out


def max_err(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max((x - y).abs().max().item() for x, y in zip(a, b))


def blocks(model: nn.Module) -> list[tuple[str, ShuffleBlock]]:
    return [(n, m) for n, m in model.named_modules() if isinstance(m, ShuffleBlock)]


# ------------------------------------------------------------------------------------------------ blocks


@pytest.mark.parametrize("stride, c1, c2", [(1, 16, 16), (2, 8, 24), (2, 16, 16)])
def test_shuffle_block_is_split_branch_concat_shuffle(stride, c1, c2):
    torch.manual_seed(0)
    b = randomize_bn(ShuffleBlock(c1, c2, stride)).eval()
    x = torch.randn(2, c1, 16, 16)
    with torch.no_grad():
        if stride == 1:
            x1, x2 = x.chunk(2, 1)
            ref = channel_shuffle(torch.cat((x1, b.branch2(x2)), 1), 2)
        else:
            ref = channel_shuffle(torch.cat((b.branch1(x), b.branch2(x)), 1), 2)
        assert torch.equal(b(x), ref)
    assert b(x).shape == (2, c2, 16 // stride, 16 // stride)
    # YOLOv5-Lite / torchvision key layout: depthwise convs at branch1.0 and branch2.3
    keys = set(b.state_dict())
    assert {"branch2.0.weight", "branch2.3.weight", "branch2.5.weight", "branch2.6.running_var"} <= keys
    assert b.branch2[3].groups == b.branch2[3].in_channels
    assert ("branch1.0.weight" in keys) == (stride > 1)


def test_concat_shuffle_interleaves_halves():
    a, b = torch.arange(3.0).view(1, 3, 1, 1), 10 + torch.arange(3.0).view(1, 3, 1, 1)
    assert concat_shuffle(a, b).flatten().tolist() == [0, 10, 1, 11, 2, 12]
    assert torch.equal(concat_shuffle(a, b), channel_shuffle(torch.cat((a, b), 1), 2))


def test_stem_and_bad_block_arguments():
    assert ConvBNReLUMaxPool(3, 16)(torch.zeros(1, 3, 64, 64)).shape == (1, 16, 16, 16)
    with pytest.raises(ValueError, match="keeps its width"):
        ShuffleBlock(16, 32, 1)
    with pytest.raises(ValueError, match="even"):
        ShuffleBlock(16, 31, 2)
    d = tiny("v5lite-s")
    d["backbone"][2] = [-1, 3, "ShuffleBlock", [64, 1]]  # a stride-1 block that would change the width
    with pytest.raises(ModelConfigError, match="layer 2"):
        build_model(d)


def test_fuse_folds_block_batchnorms():
    torch.manual_seed(0)
    m = randomize_bn(build_model(tiny("v5lite-s"))).eval()
    x = torch.rand(1, 3, 64, 64)
    ref = raw(m, x)
    m.fuse()
    assert m.is_fused
    assert max_err(ref, raw(m, x)) < 1e-4


# ------------------------------------------------------------------------------------------------ yaml configs


@pytest.mark.parametrize("name", CONFIGS)
def test_packaged_config_builds_and_runs(name):
    m = build_model(name).eval()
    assert sum(p.numel() for p in m.parameters()) > 1_000_000
    assert m.stride.tolist() == [8.0, 16.0, 32.0]
    assert m.model[0].type == "ConvBNReLUMaxPool"
    with torch.no_grad():
        decoded, maps = m(torch.zeros(1, 3, 64, 64))
    assert decoded.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 85)
    assert [tuple(t.shape) for t in maps] == [(1, 3, 8, 8, 85), (1, 3, 4, 4, 85), (1, 3, 2, 2, 85)]
    widths = [b.branch2[5].out_channels * 2 for _, b in blocks(m)]
    assert all(w % 2 == 0 for w in widths)


def test_config_widths():
    lite = build_model("v5lite-s")
    assert [lite.model[i].branch2[5].out_channels * 2 for i in (1, 3, 5)] == [120, 232, 464]
    assert len(lite.model[4]) == 7 and len(lite.model[6]) == 3  # ShuffleNetV2 repeats kept (depth 1.0)
    n = build_model("yolov5n-shufflenetv2")
    assert [n.model[i].branch2[5].out_channels * 2 for i in (1, 3, 5)] == [64, 128, 256]  # what yolov5n's neck reads
    assert n.model[7].type == "SPPF" and n.detect.m[0].in_channels == 64


@pytest.mark.parametrize("width", [0.1, 0.25, 0.33])
def test_small_widths_keep_channels_even(width):
    m = build_model(tiny("v5lite-s", width))
    for _, b in blocks(m):
        assert b.branch2[5].out_channels >= 4 and (b.branch2[5].out_channels * 2) % 8 == 0


# ------------------------------------------------------------------------------------------------ pruning


@pytest.fixture(scope="module", params=CONFIGS)
def pruned_setup(request):
    torch.manual_seed(0)
    model = randomize_bn(build_model(tiny(request.param)), seed=2).eval()
    graph = build_graph(model, 128)
    plan = plan_pruning(graph, PruneConfig(ratio=0.4, round_to=1, imgsz=128))
    return request.param, model, graph, plan


def test_split_and_shuffle_channels_are_protected(pruned_setup):
    _, model, graph, _ = pruned_setup
    reasons = dict(graph.protected)
    protected = {n for names in reasons for n in names.split(", ")}
    for name, b in blocks(model):
        assert f"{name}.branch2.5" in protected  # every block output crosses the shuffle
        if b.stride > 1:
            assert f"{name}.branch1.2" in protected
    assert any("Stack" in r for r in reasons.values())
    producers = {p for g in graph.groups for p in g.producers}
    readers = {m.name for g in graph.groups for m in g.members if m.kind == "in"}
    for name, b in blocks(model):
        assert f"{name}.branch2.5" not in producers and f"{name}.branch1.2" not in producers
        if b.stride == 1:
            assert f"{name}.branch2.0" not in readers  # reads the split half
    # what is prunable: every block's branch2 internals (1x1 out, depthwise, next 1x1 in), the stem, the head
    internal = {g.name for g in graph.groups if g.ltype == "ShuffleBlock"}
    assert internal == {f"{name}.branch2.0" for name, _ in blocks(model)}
    for g in graph.groups:
        if g.ltype == "ShuffleBlock":
            kinds = sorted((m.name.rsplit(".", 1)[1], m.kind) for m in g.members)
            assert kinds == [("0", "out"), ("1", "bn"), ("3", "dw"), ("4", "bn"), ("5", "in")]
    assert "model.0.conv.0" in producers
    assert {g.ltype for g in graph.groups} >= {"ConvBNReLUMaxPool", "ShuffleBlock", "Conv", "C3"}


def test_pruning_removes_internal_channels_only(pruned_setup):
    _, model, graph, plan = pruned_setup
    pruned = apply_plan(model, plan)
    before, after = dict(model.named_modules()), dict(pruned.named_modules())
    for name, b in blocks(model):
        p = after[name]
        assert p.branch2[5].out_channels == b.branch2[5].out_channels
        if b.stride > 1:
            assert p.branch1[2].out_channels == b.branch1[2].out_channels
        else:
            assert p.branch2[0].in_channels == b.branch2[0].in_channels
        mid = p.branch2[0].out_channels
        assert p.branch2[3].in_channels == p.branch2[3].out_channels == p.branch2[3].groups == mid
        assert p.branch2[1].num_features == p.branch2[4].num_features == mid == p.branch2[5].in_channels
    shrunk = [n for n, b in blocks(model) if after[n].branch2[0].out_channels < b.branch2[0].out_channels]
    assert len(shrunk) >= len(blocks(model)) // 2, "ratio 0.4 should reach the blocks' internal channels"
    assert before["model.0.conv.0"].out_channels >= after["model.0.conv.0"].out_channels
    x = torch.rand(2, 3, 128, 128)
    assert [t.shape for t in raw(model, x)] == [t.shape for t in raw(pruned, x)]


def test_zero_gamma_channels_are_removed_losslessly(pruned_setup):
    """Masked (gamma = 0 on the planned channels) and physically pruned models agree: the right channels went,
    with their constant contribution folded into the consumers."""
    _, model, _, plan = pruned_setup
    masked = copy.deepcopy(model)
    zero_removed_gammas(masked, plan)
    assert plan.removed_channels > 0
    pruned = apply_plan(masked, plan).double()
    x = torch.rand(1, 3, 256, 256, dtype=torch.float64)
    ref = interior(masked.double(), x, 0.3)
    assert max_err(ref, interior(pruned, x, 0.3)) < 1e-4
    assert max_err(ref, interior(apply_plan(masked, plan, compensate="none").double(), x, 0.3)) > 1e-3


def test_head_convs_next_to_shuffle_outputs_map_through_concats(pruned_setup):
    """The head's lateral convs are concatenated with block outputs; their readers must get the right offsets
    (torch-pruning alone infers wrong concat sizes next to shuffles: prune.graph measures them)."""
    name, _, graph, _ = pruned_setup
    lateral = {"v5lite-s": ["model.7.conv", "model.11.conv"], "yolov5n-shufflenetv2": ["model.8.conv", "model.12.conv"]}
    for conv in lateral[name]:
        g = next(g for g in graph.groups if conv in g.producers)
        for m in g.members:
            if m.kind == "in":
                assert len(m.idxs) == g.channels and np.all(np.diff(m.idxs) == 1), (conv, m.name, m.idxs)


def test_sparsity_on_prunable_layers_skips_shuffled_channels(pruned_setup):
    """--sparsity-layers prunable leaves out the BatchNorms of channels that cross the shuffle (never pruned: each
    branch's last one, and branch1's first where it normalises the shuffled block input) and keeps the internal
    ones."""
    from prune.sparse_target import prunable_bn_names
    from sparsity.bn_l1 import select_bns

    _, model, graph, _ = pruned_setup
    named = {id(m): n for n, m in model.named_modules()}
    in_groups = {m.name for g in graph.groups for m in g.members if m.kind == "bn"}
    chosen = {named[id(bn)] for bn in select_bns(model, "prunable", prunable_bn_names(model))}
    assert chosen and chosen <= in_groups
    outputs = {f"{n}.branch2.6" for n, _ in blocks(model)}
    assert outputs and not chosen & outputs
    assert {f"{n}.branch2.1" for n, _ in blocks(model)} <= chosen


def test_checkpoint_round_trip_of_pruned_model(pruned_setup, tmp_path):
    _, model, _, plan = pruned_setup
    pruned = apply_plan(model, plan)
    path = save_checkpoint(tmp_path / "p.pt", pruned, {"imgsz": 128})
    loaded, _ = load_model(path)
    assert module_shapes(loaded) == module_shapes(pruned)
    x = torch.rand(1, 3, 96, 96)
    assert max_err(raw(pruned.eval(), x), raw(loaded.eval(), x)) == 0.0


# ------------------------------------------------------------------------------------------------ end to end


NO_AUG = {"mosaic": 0.0, "fliplr": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0, "scale": 0.0,
          "warmup_epochs": 0.0}  # fmt: skip


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    from yolo.synthetic import make_synthetic_dataset

    root = tmp_path_factory.mktemp("shufflenet")
    data = make_synthetic_dataset(root / "data", n_train=8, n_val=4, img_size=96, seed=1)
    images = [np.asarray(Image.open(p).convert("RGB")) for p in sorted((root / "data/images/val").glob("*"))[:2]]
    return {"data": data, "nc": yaml.safe_load(data.read_text())["nc"], "images": images}


def _train_opts(synth: dict, tmp_path, **kw):
    from finetune.trainer import TrainOptions

    common = dict(data=str(synth["data"]), epochs=1, batch_size=4, nbs=4, imgsz=64, device="cpu", workers=0,
                  noval=True, project=str(tmp_path / "runs"), hyp_overrides=dict(NO_AUG), quiet=True)  # fmt: skip
    return TrainOptions(**common, **kw)


@pytest.mark.filterwarnings("ignore::prune.apply.PruneWarning")  # an unsparsified model: large gammas go
def test_v5lite_train_prune_finetune_export(synth, tmp_path):
    """v5lite-s at width 0.25: one epoch on synthetic data, prune 0.3, one fine-tuning epoch, ONNX with parity."""
    from finetune.trainer import train
    from prune import prune_model, save_pruned
    from reports.export import check_parity, export_onnx

    cfg = tmp_path / "v5lite-tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny("v5lite-s", 0.25, synth["nc"])))
    first = train(_train_opts(synth, tmp_path, cfg=str(cfg), name="train"))
    model, meta = load_model(first.last)
    pruned, table = prune_model(model, PruneConfig(ratio=0.3, imgsz=64))
    assert table.params_after < table.params_before
    assert any(r.type == "ShuffleBlock" and r.after < r.before for r in table.rows)
    ckpt = save_pruned(tmp_path / "prune", pruned, meta, table)
    second = train(_train_opts(synth, tmp_path, weights=str(ckpt), name="finetune"))
    tuned, _ = load_model(second.last)
    assert module_shapes(tuned) == module_shapes(pruned)
    onnx_path = export_onnx(tuned, tmp_path / "lite.onnx", 64)
    # every anchor's decoded box and scores compared; NMS at the default threshold (an untrained head gives many
    # exactly tied low scores, where the two backends may legitimately keep different boxes)
    report = check_parity(tuned, onnx_path, synth["images"])
    assert report.passed and report.max_score_diff < 1e-4, report.summary()


def test_shufflenetv2_yolov5n_trains_and_exports_dynamic(synth, tmp_path):
    """The other config: one (sparse) training epoch, then a dynamic-shape ONNX export with parity at two sizes."""
    from finetune.trainer import train
    from reports.export import check_parity, export_onnx

    cfg = tmp_path / "sn-tiny.yaml"
    cfg.write_text(yaml.safe_dump(tiny("yolov5n-shufflenetv2", 0.25, synth["nc"])))
    res = train(_train_opts(synth, tmp_path, cfg=str(cfg), sparsity=1e-3, sparsity_layers="prunable"))
    model, _ = load_model(res.last)
    assert model.model[0].type == "ConvBNReLUMaxPool"
    path = export_onnx(model, tmp_path / "sn.onnx", 64, dynamic="all")
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((48, 64), (90, 60))]
    report = check_parity(model, path, images, imgsz=96)
    assert report.passed and len({tuple(s) for s in report.shapes}) == 2, report.summary()
