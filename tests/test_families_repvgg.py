"""Focus-era and RepVGG models: exact Focus -> Conv and RepVGG -> Conv rewrites, checkpoints that reload as the
rewritten structure, ONNX graphs without leftovers, pruning before and after re-parameterisation, the CLI, and the
whole family run (train, prune, fine-tune, reparam, export) on tiny synthetic data."""

from __future__ import annotations

import copy
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from prune import PruneConfig, apply_plan, build_graph, plan_pruning
from reports.export import check_parity, export_onnx
from tests.zoo import A2, ZOO, cfg, randomize_bn, tiny_official, zero_removed_gammas
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.checkpoint import load_model, save_checkpoint
from yolo.model import ModelConfigError, build_model
from yolo.modules import Conv, Focus
from yolo.repvgg import RepVGG
from yolo.transforms import TransformError, focus_to_conv, reparameterize, replace_focus

pytestmark = pytest.mark.usefixtures("single_thread")
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(autouse=True)
def _seeded():
    """Fresh models and inputs come from the global RNG: make every test's draw reproducible."""
    torch.manual_seed(0)


# ------------------------------------------------------------------------------------------------ helpers


def raw_maps(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Eval outputs: the decoded tensor and every raw map."""
    with torch.no_grad():
        decoded, raw = model.eval()(x.to(next(model.parameters())))
    return [decoded, *raw]


def max_diff(a: list[torch.Tensor], b: list[torch.Tensor]) -> float:
    return max(float((u.double() - v.double()).abs().max()) for u, v in zip(a, b))


def raw_only(model: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    return raw_maps(model, x)[1:]


def onnx_ops(path: Path) -> list[str]:
    return [n.op_type for n in onnx.load(str(path)).graph.node]


def input_consumers(path: Path) -> list[str]:
    """Op types reading the image input: the Focus stem shows as 4 Slice (+ Concat), a Conv stem as one Conv.
    (Detect's box/score split is exported as Slice ops too; those are not the stem's.)"""
    g = onnx.load(str(path)).graph
    return [n.op_type for n in g.node if g.input[0].name in n.input]


def n_conv2d(model: nn.Module) -> int:
    return sum(isinstance(m, nn.Conv2d) for m in model.modules())


def tiny_repvgg(width: float = 0.25, nc: int = 3) -> nn.Module:
    return build_model(tiny_official("yolov5n-repvgg", width=width, nc=nc))


def synthetic_images(n: int = 2, size: int = 64) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (size, size, 3), dtype=np.uint8) for _ in range(n)]


def interior(model: nn.Module, x: torch.Tensor, margin: float = 0.25) -> list[torch.Tensor]:
    """Raw maps with `margin` of each side cropped (zero padding makes removed constants differ at borders)."""
    out = []
    for r in raw_only(model, x):
        ny, nx = r.shape[2:4]
        cy, cx = max(1, int(ny * margin)), max(1, int(nx * margin))
        out.append(r[:, :, cy : ny - cy, cx : nx - cx])
    return out


# ------------------------------------------------------------------------------------------------ RepVGG


def test_yaml_builds_repvgg_blocks():
    model = tiny_repvgg()
    blocks = [model.model[i] for i in (1, 3, 5, 7)]
    assert all(type(b) is RepVGG and b.type == "RepVGG" for b in blocks)
    assert all(b.rbr_identity is None for b in blocks)  # stride 2: no identity branch
    assert blocks[0].rbr_dense.conv.kernel_size == (3, 3) and blocks[0].rbr_1x1.conv.kernel_size == (1, 1)
    zoo = ZOO["repvgg"].build()
    assert isinstance(zoo.model[1].rbr_identity, nn.BatchNorm2d)  # stride 1, c1 == c2
    assert isinstance(zoo.model[3], nn.Sequential) and len(zoo.model[3]) == 2
    with pytest.raises(ModelConfigError, match="layer 1.*RepVGG supports kernel 3"):
        build_model(cfg([[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "RepVGG", [16, 5, 1]]],
                        [[[0, 1], 1, "Detect", ["nc", "anchors"]]]))  # fmt: skip
    act = build_model({**tiny_official("yolov5n-repvgg"), "activation": "nn.LeakyReLU(0.1)"})
    assert isinstance(act.model[1].act, nn.LeakyReLU)  # yaml activation reaches RepVGG like Conv
    full = build_model("yolov5n-repvgg")
    reparameterize(full)  # folded, the packaged config is exactly YOLOv5n (official parameter count)
    assert sum(p.numel() for p in full.parameters()) == 1_872_157


@pytest.mark.parametrize("name", ["zoo", "yolov5n-repvgg"])
def test_reparam_is_exact_and_round_trips(name, tmp_path):
    model = ZOO["repvgg"].build() if name == "zoo" else tiny_repvgg()
    model = randomize_bn(model, seed=5).eval()
    n_blocks = sum(isinstance(m, RepVGG) for m in model.modules())
    convs_before = n_conv2d(model)
    x = torch.rand(2, 3, 64, 64)
    ref = raw_maps(model, x)

    fused = copy.deepcopy(model).fuse()  # inference-only fold (export path)
    assert fused.is_fused and max_diff(ref[1:], raw_only(fused, x)) < 1e-4

    rep = copy.deepcopy(model)
    assert reparameterize(rep) == n_blocks
    assert not any(isinstance(m, RepVGG) for m in rep.modules())
    assert n_conv2d(rep) == convs_before - n_blocks  # two branch convs -> one conv per block
    assert max_diff(ref[1:], raw_only(rep, x)) < 1e-4
    m64, r64 = copy.deepcopy(model).double(), copy.deepcopy(model).double()
    reparameterize(r64)  # folded in float64: equal up to float64 rounding, decoded pixels included
    assert max_diff(raw_maps(m64, x.double()), raw_maps(r64, x.double())) < 1e-9
    rows = rep.yaml["backbone"] + rep.yaml["head"]
    assert "RepVGG" not in {r[2] for r in rows} and rep.yaml["transforms"] == ["reparam"]
    assert reparameterize(rep) == 0  # idempotent

    path = save_checkpoint(tmp_path / "rep.pt", rep, {"imgsz": 64})
    back, _ = load_model(path)
    assert not any(isinstance(m, RepVGG) for m in back.modules())
    assert max_diff(raw_only(rep, x), raw_only(back, x)) == 0.0


def test_reparam_keeps_train_mode_statistics_sane():
    """The folded BN has gamma = sqrt(sum gamma_i^2), beta = sum beta_i and unit running variance."""
    block = randomize_bn(RepVGG(8, 8, 3, 1), seed=2).eval()
    conv = block.to_conv()
    bns = [block.rbr_dense.bn, block.rbr_1x1.bn, block.rbr_identity]
    assert torch.allclose(conv.bn.weight, torch.sqrt(sum(b.weight**2 for b in bns)))
    assert torch.allclose(conv.bn.bias, sum(b.bias for b in bns))
    assert torch.equal(conv.bn.running_var, torch.ones(8))
    x = torch.randn(2, 8, 12, 12)
    with torch.no_grad():
        assert (block(x) - conv.eval()(x)).abs().max() < 1e-5
    block.rbr_dense.bn.weight.data[3] = block.rbr_1x1.bn.weight.data[3] = block.rbr_identity.weight.data[3] = 0
    conv = block.to_conv().eval()  # a channel with every gamma 0 is the constant act(sum beta)
    with torch.no_grad():
        assert (block(x) - conv(x)).abs().max() < 1e-5
    assert conv.bn.weight[3] == 0


def test_reparam_onnx_has_one_conv_per_block(tmp_path):
    model = randomize_bn(tiny_repvgg(), seed=1).eval()
    # each Detect conv is exported as two (box / scores, see Detect._forward_export)
    expected = n_conv2d(model) - sum(isinstance(m, RepVGG) for m in model.modules()) + model.detect.nl
    reparameterize(model)
    path = export_onnx(model, tmp_path / "rep.onnx", imgsz=64)
    ops = onnx_ops(path)
    assert ops.count("Conv") == expected
    assert "BatchNormalization" not in ops
    assert check_parity(model, path, synthetic_images()).passed


# ------------------------------------------------------------------------------------------------ Focus


@pytest.mark.parametrize("k, s, p", [(3, 1, None), (1, 1, None), (3, 2, None), (3, 1, 0), (5, 1, None)])
def test_focus_to_conv_is_exact(k, s, p):
    focus = randomize_bn(Focus(3, 8, k, s, p), seed=k + s)
    conv = focus_to_conv(focus)
    kk = conv.conv
    pad = k // 2 if p is None else p
    assert (kk.kernel_size, kk.stride, kk.padding) == ((2 * k,) * 2, (2 * s,) * 2, (2 * pad,) * 2)
    x = torch.rand(2, 3, 32, 32)
    for train in (False, True):  # same conv output, so the batch statistics agree too
        with torch.no_grad():
            a, b = focus.train(train)(x), conv.train(train)(x)
        assert a.shape == b.shape and (a - b).abs().max() < 1e-4


def test_focus_that_is_not_exact_is_refused():
    with pytest.raises(TransformError, match="groups=2"):
        focus_to_conv(Focus(4, 8, 3, 1, None, 2))
    focus = Focus(3, 8, 3)
    focus.conv.conv = nn.Conv2d(12, 8, 3, 1, 2, dilation=2, bias=False)
    with pytest.raises(TransformError, match="dilated"):
        focus_to_conv(focus)


def test_replace_focus_exact_round_trip_and_no_slice_in_onnx(tmp_path):
    model = randomize_bn(build_model(tiny_official("yolov5n-v5", width=0.25)), seed=4).eval()
    x = torch.rand(1, 3, 64, 64)
    ref = raw_maps(model, x)
    focus_onnx = export_onnx(model, tmp_path / "focus.onnx", imgsz=64)
    assert input_consumers(focus_onnx) == ["Slice"] * 4
    assert replace_focus(model) == 1
    assert type(model.model[0]) is Conv and model.model[0].type == "Conv"
    assert model.yaml["backbone"][0] == [-1, 1, "Conv", [64, 6, 2, 2]]  # as YOLOv5 v6.0 replaced it
    assert max_diff(ref[1:], raw_only(model, x)) < 1e-4
    back, _ = load_model(save_checkpoint(tmp_path / "conv.pt", model, {"imgsz": 64}))
    assert type(back.model[0]) is Conv and back.model[0].conv.kernel_size == (6, 6)
    assert max_diff(raw_only(model, x), raw_only(back, x)) == 0.0
    path = export_onnx(back, tmp_path / "conv.onnx", imgsz=64)
    assert input_consumers(path) == ["Conv"]
    assert onnx_ops(path).count("Slice") == onnx_ops(focus_onnx).count("Slice") - 4
    assert check_parity(back, path, synthetic_images()).passed
    # the pruner now sees the stem as an ordinary prunable Conv
    graph = build_graph(back, 64)
    assert any("model.0.conv" in g.producers for g in graph.groups)


# ------------------------------------------------------------------------------------------------ pruning


def _prune_zero_gamma(model: nn.Module, ratio: float = 0.3):
    """Every third channel gets small gammas in all its BatchNorms (so coupled groups have channels to lose too),
    the plan removes the least important 30%, and their gammas are set to exactly 0."""
    model = randomize_bn(model, seed=3).eval()
    for bn in (m for m in model.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.weight.data[::3] *= 0.01
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plan = plan_pruning(model, PruneConfig(ratio=ratio, round_to=1, imgsz=64))
    zero_removed_gammas(model, plan)
    return model, plan


def test_prune_repvgg_before_reparam_is_lossless_then_reparam(tmp_path):
    model, plan = _prune_zero_gamma(ZOO["repvgg"].build())
    members = {m.name for gp in plan.groups if len(gp.removed) for m in gp.info.members}
    assert "model.1.rbr_identity" in members and "model.3.1.rbr_1x1.bn" in members  # RepVGG channels went
    pruned = apply_plan(model, plan)
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in model.parameters())
    x = torch.rand(1, 3, 128, 128, dtype=torch.float64)
    ref = interior(copy.deepcopy(model).double(), x)
    assert max_diff(ref, interior(copy.deepcopy(pruned).double(), x)) < 1e-4
    assert max_diff(ref, interior(apply_plan(model, plan, compensate="none").double(), x)) > 1e-2
    # identity branch: input and output channels stay equal
    blk = pruned.model[1]
    assert blk.rbr_identity.num_features == blk.rbr_dense.conv.in_channels == blk.rbr_dense.conv.out_channels
    # a pruned RepVGG checkpoint reloads, then folds exactly
    back, _ = load_model(save_checkpoint(tmp_path / "p.pt", pruned, {"imgsz": 64}))
    xf = torch.rand(1, 3, 64, 64)
    assert max_diff(raw_only(pruned, xf), raw_only(back, xf)) == 0.0
    reparameterize(back)
    assert max_diff(raw_only(pruned, xf), raw_only(back, xf)) < 1e-4
    back2, _ = load_model(save_checkpoint(tmp_path / "pr.pt", back, {"imgsz": 64}))
    assert max_diff(raw_only(back, xf), raw_only(back2, xf)) == 0.0


def test_prune_after_reparam_works_as_for_conv():
    model = randomize_bn(ZOO["repvgg"].build(), seed=6).eval()
    reparameterize(model)
    graph = build_graph(model, 64)
    assert {"model.0.conv", "model.1.conv"} <= {p for g in graph.groups for p in g.producers}
    assert not graph.protected
    model, plan = _prune_zero_gamma(model)
    assert plan.removed_channels > 0
    pruned = apply_plan(model, plan)
    x = torch.rand(1, 3, 128, 128, dtype=torch.float64)
    ref = interior(copy.deepcopy(model).double(), x)
    assert max_diff(ref, interior(pruned.double(), x)) < 1e-4


# ------------------------------------------------------------------------------------------------ CLI


def _dispatch(argv: list[str]) -> int:
    import importlib.util

    spec = importlib.util.spec_from_file_location("prune_script", REPO / "prune.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main(argv)


def test_cli_reparam_with_replace_focus(tmp_path, capsys):
    d = cfg([[-1, 1, "Focus", [16, 3]], [-1, 1, "RepVGG", [16, 3, 1]], [-1, 1, "RepVGG", [32, 3, 2]]],
            [[[1, 2], 1, "Detect", ["nc", "anchors"]]], anchors=A2)  # fmt: skip
    model = randomize_bn(build_model(d), seed=7).eval()
    src = save_checkpoint(tmp_path / "in.pt", model, {"imgsz": 64})
    before = src.read_bytes()
    assert _dispatch(["reparam", "--weights", str(src), "--out", str(src)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "is the input file" in err
    assert src.read_bytes() == before

    out = tmp_path / "out" / "rep.pt"
    assert _dispatch(["reparam", "--weights", str(src), "--out", str(out), "--replace-focus"]) == 0
    assert "2 RepVGG block(s) folded, 1 Focus replaced" in capsys.readouterr().out
    assert src.read_bytes() == before
    rep, meta = load_model(out)
    assert [type(rep.model[i]).__name__ for i in range(3)] == ["Conv", "Conv", "Conv"]
    assert meta["history"][-1]["op"] == "reparam" and meta["history"][-1]["repvgg_blocks"] == 2
    assert not list(out.parent.glob(".*.tmp"))  # atomic write left no temp file
    x = torch.rand(1, 3, 64, 64)
    assert max_diff(raw_only(model, x), raw_only(rep, x)) < 1e-4

    assert _dispatch(["reparam", "--weights", str(tmp_path / "missing.pt"), "--out", str(out)]) == 2
    assert "not found" in capsys.readouterr().err


def test_export_cli_replace_focus(tmp_path, capsys):
    model = randomize_bn(build_model(tiny_official("yolov5n-v5", width=0.125)), seed=8).eval()
    src = save_checkpoint(tmp_path / "v5.pt", model, {"imgsz": 64})
    out = tmp_path / "v5.onnx"
    assert _dispatch(["export", "--weights", str(src), "--out", str(out), "--replace-focus"]) == 0
    assert input_consumers(out) == ["Conv"]


# ------------------------------------------------------------------------------------------------ family end to end


def _one_epoch_options(tmp_path: Path, seed: int) -> dict:
    """TrainOptions keywords for one quick epoch on a small synthetic set, augmentation off."""
    from yolo.synthetic import make_synthetic_dataset

    data = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, img_size=96, seed=seed)
    no_aug = {"mosaic": 0.0, "fliplr": 0.0, "hsv_h": 0.0, "hsv_s": 0.0, "hsv_v": 0.0, "translate": 0.0,
              "scale": 0.0, "warmup_epochs": 0.0}  # fmt: skip
    # workers=1: the trainer then keeps one intra-op thread (2 threads on a shared 2-core box ran 3-4x slower)
    return dict(data=str(data), epochs=1, batch_size=4, nbs=4, imgsz=64, device="cpu", workers=1,
                hyp_overrides=no_aug, quiet=True, noval=True, project=str(tmp_path / "runs"))  # fmt: skip


def _train_prune_finetune(tmp_path: Path, cfg: str, seed: int):
    """One epoch from the yaml, prune at ratio 0.3 (must shrink), one fine-tune epoch; returns (base, tuned, meta)."""
    from finetune.trainer import TrainOptions, train
    from prune import prune_model, save_pruned

    common = _one_epoch_options(tmp_path, seed=seed)
    base, meta = load_model(train(TrainOptions(cfg=cfg, name="base", **common)).last)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        pruned, table = prune_model(base, PruneConfig(ratio=0.3, imgsz=64))
    assert sum(p.numel() for p in pruned.parameters()) < sum(p.numel() for p in base.parameters())
    pruned_pt = save_pruned(tmp_path / "pruned", pruned, meta, table)
    tuned, meta = load_model(train(TrainOptions(weights=str(pruned_pt), name="ft", **common)).last)
    return base, tuned, meta


def test_repvgg_family_train_prune_finetune_reparam_export(tmp_path):
    base, tuned, meta = _train_prune_finetune(tmp_path, "yolov5n-repvgg", seed=1)
    assert sum(isinstance(m, RepVGG) for m in base.modules()) == 4
    assert sum(isinstance(m, RepVGG) for m in tuned.modules()) == 4

    folded = copy.deepcopy(tuned).eval()
    assert reparameterize(folded) == 4
    x = torch.rand(1, 3, 64, 64)
    assert max_diff(raw_only(tuned, x), raw_only(folded, x)) < 1e-4
    back, meta = load_model(save_checkpoint(tmp_path / "final.pt", folded, meta))
    path = export_onnx(back, tmp_path / "final.onnx", imgsz=64, metadata=meta)
    assert onnx_ops(path).count("Conv") == n_conv2d(back) + back.detect.nl  # Detect convs export as two each
    assert check_parity(back, path, synthetic_images()).passed


def test_focus_era_family_train_prune_finetune_replace_focus_export(tmp_path):
    """v5.0 layout (Focus + SPP): trains, prunes, fine-tunes, loses its Focus exactly, exports."""
    import yaml

    cfg_path = tmp_path / "v5.yaml"
    cfg_path.write_text(yaml.safe_dump(tiny_official("yolov5n-v5", width=0.25), sort_keys=False))
    base, tuned, meta = _train_prune_finetune(tmp_path, str(cfg_path), seed=2)
    assert sum(isinstance(m, Focus) for m in base.modules()) == 1

    plain = copy.deepcopy(tuned).eval()
    assert replace_focus(plain) == 1 and not any(isinstance(m, Focus) for m in plain.modules())
    x = torch.rand(1, 3, 64, 64)
    assert max_diff(raw_only(tuned.eval(), x), raw_only(plain, x)) < 1e-4
    back, meta = load_model(save_checkpoint(tmp_path / "plain.pt", plain, meta))
    path = export_onnx(back, tmp_path / "plain.onnx", imgsz=64, metadata=meta)
    assert check_parity(back, path, synthetic_images()).passed
