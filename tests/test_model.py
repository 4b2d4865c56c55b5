"""yaml -> model building, the module registry, multiples, pruned shapes, fusing, FLOPs and head reset."""

from __future__ import annotations

import builtins
import copy

import pytest
import torch
from fake_official import ANCHORS_P5, randomize_bn, shrink_channels, tiny_cfg
from torch import nn

from yolo.flops import count_gflops, count_params
from yolo.model import (
    CFG_DIR,
    MODULES,
    DetectionModel,
    ModelConfigError,
    apply_module_shapes,
    build_model,
    module_shapes,
    register_module,
    reset_detect_head,
)
from yolo.modules import C3, SPP, SPPF, Bottleneck, BottleneckCSP, Concat, Conv, Detect, Focus


def every_module_cfg(nc: int = 2) -> dict:
    """One small model using every registered building block at least once."""
    return {
        "nc": nc,
        "depth_multiple": 1.0,
        "width_multiple": 0.125,
        "anchors": copy.deepcopy(ANCHORS_P5),
        "backbone": [
            [-1, 1, "Focus", [64, 3]],  # 0  /2   8 ch
            [-1, 1, "Conv", [128, 3, 2]],  # 1  /4  16
            [-1, 1, "BottleneckCSP", [128]],  # 2      16
            [-1, 1, "Conv", [256, 3, 2]],  # 3  /8  32
            [-1, 2, "C3", [256]],  # 4      32 (two bottlenecks)
            [-1, 1, "Bottleneck", [256]],  # 5      32 (residual)
            [-1, 1, "Conv", [512, 3, 2]],  # 6  /16 64
            [-1, 1, "SPP", [512, [5, 9, 13]]],  # 7      64
            [-1, 1, "Conv", [1024, 3, 2]],  # 8  /32 128
            [-1, 1, "SPPF", [1024, 5]],  # 9      128
        ],
        "head": [
            [-1, 1, "Conv", [512, 1, 1]],  # 10 64
            [-1, 1, "nn.Upsample", [None, 2, "nearest"]],  # 11 /16
            [[-1, 7], 1, "Concat", [1]],  # 12 128
            [-1, 1, "C3", [512, False]],  # 13 64
            [-1, 1, "nn.Upsample", [None, 2, "nearest"]],  # 14 /8
            [[-1, 5], 1, "Concat", [1]],  # 15 96
            [-1, 1, "C3", [256, False]],  # 16 32
            [[16, 13, 9], 1, "Detect", ["nc", "anchors"]],  # 17
        ],
    }


@pytest.fixture(scope="module")
def every_module_model() -> DetectionModel:
    torch.manual_seed(0)
    return build_model(every_module_cfg())


# ---------------------------------------------------------------- building


def test_every_module_builds_with_expected_types_and_channels(every_module_model):
    m = every_module_model
    expected = [Focus, Conv, BottleneckCSP, Conv, C3, Bottleneck, Conv, SPP, Conv, SPPF,
                Conv, nn.Upsample, Concat, C3, nn.Upsample, Concat, C3, Detect]  # fmt: skip
    assert [type(x) for x in m.model] == expected
    assert [x.i for x in m.model] == list(range(len(expected)))
    assert m.model[11].type == "nn.Upsample" and m.model[17].f == [16, 13, 9]
    assert m.save == [5, 7, 9, 13, 16]
    assert m.model[0].conv.conv.in_channels == 12  # Focus: 3 channels x 4 pixels
    assert m.model[0].conv.conv.out_channels == 8
    assert len(m.model[4].m) == 2  # C3 repeats
    assert m.model[5].add and not m.model[13].m[0].add  # shortcut only where asked and shapes allow
    assert m.model[7].cv2.conv.in_channels == 4 * 32  # SPP: x + 3 pools of c1 // 2
    assert m.model[13].cv1.conv.in_channels == 64 + 64  # Concat of layers 11 and 7
    assert m.model[16].cv1.conv.in_channels == 64 + 32
    assert [c.in_channels for c in m.detect.m] == [32, 64, 128]
    assert [c.out_channels for c in m.detect.m] == [3 * 7] * 3
    assert m.stride.tolist() == [8.0, 16.0, 32.0]


@pytest.mark.parametrize("hw", [(64, 64), (64, 96)])
def test_output_shapes_train_and_eval(every_module_model, hw):
    m, (h, w) = every_module_model, hw
    x = torch.rand(2, 3, h, w)
    grids = [(h // s, w // s) for s in (8, 16, 32)]
    m.train()
    out = m(x)
    assert isinstance(out, list) and [tuple(t.shape) for t in out] == [(2, 3, gy, gx, 7) for gy, gx in grids]
    m.eval()
    with torch.no_grad():
        dec, raw = m(x)
    assert dec.shape == (2, 3 * sum(gy * gx for gy, gx in grids), 7)
    assert [tuple(t.shape) for t in raw] == [(2, 3, gy, gx, 7) for gy, gx in grids]


def test_eval_decode_matches_yolov5_formula_on_non_square_input(every_module_model):
    """Boxes are (xy*2 - 0.5 + grid) * stride and (wh*2)^2 * anchor; checks x/y grid order when h != w."""
    m = every_module_model.eval()
    with torch.no_grad():
        dec, raw = m(torch.rand(1, 3, 64, 96))
    start = 0
    for level, (p, s) in enumerate(zip(raw, (8, 16, 32))):
        _, na, ny, nx, no = p.shape
        y = p.sigmoid()
        gy, gx = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        exp = y.clone()
        exp[..., 0] = (y[..., 0] * 2 - 0.5 + gx) * s
        exp[..., 1] = (y[..., 1] * 2 - 0.5 + gy) * s
        anchors_px = torch.tensor(ANCHORS_P5[level], dtype=torch.float32).view(na, 1, 1, 2)
        exp[..., 2:4] = (y[..., 2:4] * 2) ** 2 * anchors_px
        n = na * ny * nx
        torch.testing.assert_close(dec[:, start : start + n], exp.view(1, n, no), atol=1e-4, rtol=1e-5)
        start += n
    assert start == dec.shape[1]


def test_sppf_equals_spp_with_same_weights():
    torch.manual_seed(0)
    spp, sppf = SPP(16, 24, (5, 9, 13)), SPPF(16, 24, 5)
    sppf.load_state_dict(spp.state_dict())  # same keys: cv1, cv2
    x = torch.randn(1, 16, 20, 20)
    torch.testing.assert_close(sppf.eval()(x), spp.eval()(x))


# ---------------------------------------------------------------- packaged configs

PACKAGED = {
    # name: (official parameter count or None, strides)
    "yolov5n": (1_872_157, [8, 16, 32]),
    "yolov5s": (7_235_389, [8, 16, 32]),
    "yolov5m": (21_190_557, [8, 16, 32]),
    "yolov5l": (46_563_709, [8, 16, 32]),
    "yolov5x": (86_749_405, [8, 16, 32]),
    "yolov5s-v5": (7_276_605, [8, 16, 32]),  # release v5.0 yolov5s
    "yolov5n-v5": (None, [8, 16, 32]),
    "yolov5n6": (None, [8, 16, 32, 64]),
    "yolov5s6": (None, [8, 16, 32, 64]),
    "yolov5n-repvgg": (None, [8, 16, 32]),  # reparameterised: exactly yolov5n (tests/test_families_repvgg.py)
    "v5lite-s": (None, [8, 16, 32]),  # YOLOv5-Lite-s layout (ShuffleNetV2 backbone), our own yaml
    "yolov5n-shufflenetv2": (None, [8, 16, 32]),
    "yolo-fastestv2": (243_095, [16, 32]),  # the authors' state_dict: 251,664 numbers with BN statistics
}


def test_every_packaged_config_is_tested():
    assert sorted(p.stem for p in CFG_DIR.glob("*.yaml")) == sorted(PACKAGED)


@pytest.mark.parametrize(
    "name", [pytest.param(n, marks=pytest.mark.slow) if n in ("yolov5l", "yolov5x") else n for n in sorted(PACKAGED)]
)
def test_packaged_config_builds(name):
    params, strides = PACKAGED[name]
    m = build_model(name)
    assert m.stride.tolist() == strides
    assert m.detect.nl == len(strides) and m.nc == 80
    if params is not None:
        assert count_params(m) == params
    if name.endswith("6"):  # README: yolov5n6 3.2M, yolov5s6 12.6M
        assert round(count_params(m) / 1e6, 1) == {"yolov5n6": 3.2, "yolov5s6": 12.6}[name]
    if name in ("yolov5n", "yolov5n6", "yolov5n-v5"):
        m.eval()
        with torch.no_grad():
            dec, raw = m(torch.zeros(1, 3, 128, 128))
        assert dec.shape == (1, 3 * sum((128 // s) ** 2 for s in strides), 85)
        assert len(raw) == len(strides)


def test_packaged_config_by_file_path_and_nc_override(tmp_path):
    p = tmp_path / "my.yaml"
    p.write_text((CFG_DIR / "yolov5n.yaml").read_text())
    m = DetectionModel(p, nc=3)
    assert m.nc == 3 and m.yaml["nc"] == 3 and m.detect.m[0].out_channels == 3 * 8
    assert m.names == ["0", "1", "2"]


def test_official_parameter_names():
    m = build_model("yolov5n")
    sd = m.state_dict()
    for key in (
        "model.0.conv.weight",
        "model.0.bn.running_var",
        "model.2.cv1.conv.weight",
        "model.2.m.0.cv2.bn.bias",
        "model.9.cv2.conv.weight",
        "model.24.m.0.weight",
        "model.24.m.0.bias",
        "model.24.m.2.bias",
        "model.24.anchors",
    ):
        assert key in sd, key
    assert not any("anchor_grid" in k or "grid" in k.split(".")[-1] for k in sd)
    assert sd["model.24.anchors"].shape == (3, 3, 2)
    # stored in grid units, as the official Model does after building
    exp = torch.tensor(ANCHORS_P5, dtype=torch.float32).view(3, 3, 2) / torch.tensor([8.0, 16, 32]).view(3, 1, 1)
    torch.testing.assert_close(sd["model.24.anchors"], exp)


def test_gflops_and_params_yolov5n_640():
    m = build_model("yolov5n")
    assert count_params(m) == 1_872_157
    g640 = count_gflops(m, 640)
    assert abs(g640 - 4.5) <= 0.1
    assert count_gflops(m, 320) == pytest.approx(g640 / 4, rel=1e-3)
    assert m.training  # counting must not flip the caller's model to eval


# ---------------------------------------------------------------- errors


def test_unknown_module_lists_known_modules():
    cfg = tiny_cfg()
    cfg["backbone"][2] = [-1, 1, "C3TR", [128]]
    with pytest.raises(ModelConfigError) as e:
        build_model(cfg)
    msg = str(e.value)
    assert "'C3TR'" in msg and "layer 2" in msg
    for known in ("C3", "Conv", "SPPF", "Focus", "Detect", "nn.Upsample"):
        assert known in msg


@pytest.mark.parametrize(
    "row",
    [
        [-1, 1, "Conv"],  # 3 fields
        [-1, 1, "Conv", [128, 3, 2], "extra"],
        "Conv 128",
        [-1, "three", "Conv", [128, 3, 2]],
        [-1, None, "Conv", [128, 3, 2]],
        [-1, 1, "Conv", 128],  # args not a list
        [-1, 1, "Conv", ["wide", 3, 2]],
        [-1, 1, "Conv", [128, 3, 2, "bad"]],
        [[-1, 9], 1, "Concat", [1]],  # refers to a later layer
        [40, 1, "Conv", [128, 3, 2]],
    ],
)
def test_malformed_row_names_the_row(row):
    cfg = tiny_cfg()
    cfg["backbone"][1] = row
    with pytest.raises(ModelConfigError) as e:
        build_model(cfg)
    assert "layer 1" in str(e.value) and repr(row) in str(e.value)


@pytest.mark.parametrize("drop", ["backbone", "head", "nc", "anchors"])
def test_missing_top_level_key(drop):
    cfg = tiny_cfg()
    del cfg[drop]
    with pytest.raises(ModelConfigError, match=drop):
        build_model(cfg)


def test_bad_yaml_file_and_unknown_config_name(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: [[-1, 1, Conv\n")
    with pytest.raises(ModelConfigError, match="bad.yaml"):
        build_model(bad)
    with pytest.raises(ModelConfigError, match="yolov5n"):  # lists the packaged names
        build_model("yolov5q")


def test_registry_refuses_duplicate_names():
    with pytest.raises(KeyError):
        register_module("C3", C3, "csp")
    assert MODULES["C3"].cls is C3


# ---------------------------------------------------------------- activation (no eval)


def test_activation_key_leaky_relu():
    m = build_model(tiny_cfg(activation="nn.LeakyReLU(0.1)"))
    acts = [c.act for c in m.modules() if isinstance(c, Conv)]
    assert acts and all(isinstance(a, nn.LeakyReLU) and a.negative_slope == pytest.approx(0.1) for a in acts)
    assert not any(isinstance(a, nn.SiLU) for a in m.modules())
    relu = build_model(tiny_cfg(activation="nn.ReLU()"))
    assert all(isinstance(c.act, nn.ReLU) for c in relu.modules() if isinstance(c, Conv))


@pytest.mark.parametrize(
    "text",
    [
        "__import__('os').system('touch {marker}')",
        "nn.LeakyReLU(__import__('os').system('touch {marker}'))",
        "open('{marker}', 'w')",
        "nn.Sequential()",
        "LeakyReLU",
    ],
)
def test_activation_strings_are_parsed_not_evaluated(text, tmp_path, monkeypatch):
    marker = tmp_path / "pwned"

    def boom(*a, **k):
        raise AssertionError("eval/exec called while building a model")

    monkeypatch.setattr(builtins, "eval", boom)
    monkeypatch.setattr(builtins, "exec", boom)
    with pytest.raises(ModelConfigError, match="activation"):
        build_model(tiny_cfg(activation=text.format(marker=marker)))
    assert not marker.exists()
    build_model(tiny_cfg(activation="nn.SiLU()"))  # a whole build runs without eval/exec


def test_module_name_strings_are_not_evaluated(tmp_path):
    marker = tmp_path / "pwned"
    cfg = tiny_cfg()
    cfg["backbone"][1] = [-1, 1, f"__import__('os').system('touch {marker}')", [128]]
    with pytest.raises(ModelConfigError, match="unknown module"):
        build_model(cfg)
    cfg = tiny_cfg()
    cfg["backbone"][1] = [-1, 1, "Conv", [f"__import__('os').system('touch {marker}')", 3, 2]]
    with pytest.raises(ModelConfigError):
        build_model(cfg)
    assert not marker.exists()


# ---------------------------------------------------------------- multiples


@pytest.mark.parametrize(("gd", "n3", "n9"), [(0.33, 1, 3), (0.67, 2, 6), (1.0, 3, 9), (0.1, 1, 1)])
def test_depth_multiple_sets_repeats(gd, n3, n9):
    cfg = tiny_cfg(depth=gd)
    cfg["backbone"][4] = [-1, 9, "C3", [256]]
    m = build_model(cfg)
    assert len(m.model[2].m) == n3 and len(m.model[4].m) == n9
    assert len(m.model[6].m) == 1  # n=1 is never scaled


@pytest.mark.parametrize(("gw", "c64", "c1024"), [(0.125, 8, 128), (0.25, 16, 256), (0.3, 24, 312), (0.5, 32, 512)])
def test_width_multiple_sets_channels(gw, c64, c1024):
    m = build_model(tiny_cfg(width=gw))
    assert m.model[0].conv.out_channels == c64  # make_divisible(64 * gw, 8)
    assert m.model[7].conv.out_channels == c1024
    assert m.model[8].cv1.conv.out_channels == c1024 // 2  # C3 hidden = int(c2 * 0.5)
    assert all(c.out_channels == 3 * 7 for c in m.detect.m)  # the head is never width-scaled


# ---------------------------------------------------------------- pruned shapes and fusing


def _hand_pruned(seed: int = 0) -> tuple[DetectionModel, dict]:
    torch.manual_seed(seed)
    cfg = every_module_cfg()
    m = randomize_bn(build_model(cfg), seed)
    shrink_channels(m, "model.0.conv.conv", "model.0.conv.bn", "model.1.conv", [0, 2, 3, 5, 7])  # 8 -> 5
    shrink_channels(m, "model.4.m.1.cv1.conv", "model.4.m.1.cv1.bn", "model.4.m.1.cv2.conv", [1, 4, 6])  # 16 -> 3
    # model.10 reaches model.13's cv1 and cv2 through Upsample + Concat (its channels come first)
    shrink_channels(m, "model.10.conv", "model.10.bn", ["model.13.cv1.conv", "model.13.cv2.conv"], [*range(0, 64, 2)])
    # SPP model.7 is read by model.8 and, second in the Concat at 12, by model.13's cv1 and cv2 (offset 32 now)
    shrink_channels(
        m, "model.7.cv2.conv", "model.7.cv2.bn", ["model.8.conv", ("model.13.cv1.conv", 32), ("model.13.cv2.conv", 32)],
        [*range(10, 50)],
    )  # fmt: skip
    return m, cfg


def test_module_shapes_rebuild_a_hand_pruned_model():
    m, cfg = _hand_pruned()
    m.eval()
    x = torch.rand(1, 3, 64, 96)
    with torch.no_grad():
        ref = m(x)
    shapes = module_shapes(m)
    assert shapes["model.0.conv.conv"] == [5, 12, 1] and shapes["model.0.conv.bn"] == [5]
    assert shapes["model.1.conv"][1] == 5
    assert shapes["model.4.m.1.cv1.conv"] == [3, 16, 1] and shapes["model.4.m.1.cv2.conv"] == [16, 3, 1]
    assert shapes["model.13.cv1.conv"][1] == 32 + 40 and shapes["model.13.cv2.conv"][1] == 32 + 40
    assert shapes["model.7.cv2.conv"] == [40, 128, 1] and shapes["model.8.conv"][1] == 40

    rebuilt = build_model(cfg, shapes=shapes)
    assert module_shapes(rebuilt) == shapes
    rebuilt.load_state_dict(m.state_dict())  # strict: every key and shape fits
    rebuilt.eval()
    with torch.no_grad():
        out = rebuilt(x)
    torch.testing.assert_close(out[0], ref[0], atol=1e-6, rtol=1e-6)
    assert rebuilt.stride.tolist() == [8.0, 16.0, 32.0]
    assert count_params(rebuilt) < count_params(build_model(cfg))


def test_apply_module_shapes_errors_and_noop():
    m = build_model(tiny_cfg())
    before = {k: v.clone() for k, v in m.state_dict().items()}
    apply_module_shapes(m, module_shapes(m))  # same shapes: nothing replaced
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    with pytest.raises(ModelConfigError, match="model.99.conv"):
        apply_module_shapes(m, {"model.99.conv": [8, 8, 1]})
    with pytest.raises(ModelConfigError, match="Conv2d/BatchNorm2d"):
        apply_module_shapes(m, {"model.0": [8, 8, 1]})


@pytest.mark.parametrize("pruned", [False, True])
def test_fuse_keeps_outputs(pruned):
    if pruned:
        m, _ = _hand_pruned(1)
    else:
        torch.manual_seed(1)
        m = randomize_bn(build_model(every_module_cfg()), 1)
    m.eval()
    x = torch.rand(2, 3, 64, 64)
    with torch.no_grad():
        ref_dec, ref_raw = m(x)
        p_before = count_params(m)
        m.fuse()
        dec, raw = m(x)
    assert not any(hasattr(c, "bn") for c in m.modules() if isinstance(c, Conv))
    # as in YOLOv5, only Conv units fold their BN; BottleneckCSP keeps the BN after its concat
    assert [type(b) for b in m.modules() if isinstance(b, nn.BatchNorm2d)] == [nn.BatchNorm2d]
    assert count_params(m) < p_before
    torch.testing.assert_close(dec, ref_dec, atol=1e-5, rtol=1e-5)
    for a, b in zip(raw, ref_raw):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)


# ---------------------------------------------------------------- head reset


@pytest.mark.parametrize("mode", ["train", "eval"])
def test_reset_detect_head_changes_nc_keeps_anchors_and_stride(mode):
    torch.manual_seed(0)
    m = build_model(tiny_cfg(nc=80))
    m.train(mode == "train")
    anchors, stride = m.detect.anchors.clone(), m.stride.clone()
    backbone = {k: v.clone() for k, v in m.state_dict().items() if not k.startswith("model.24.")}
    reset_detect_head(m, 2, names=["with helmet", "without helmet"])
    assert m.nc == 2 and m.yaml["nc"] == 2 and m.detect.no == 7
    assert m.names == ["with helmet", "without helmet"]
    assert torch.equal(m.detect.anchors, anchors) and torch.equal(m.stride, stride)
    assert all(c.out_channels == 3 * 7 for c in m.detect.m)
    assert all(torch.equal(v, backbone[k]) for k, v in m.state_dict().items() if k in backbone)
    assert m.detect.training == (mode == "train")  # the new head follows the model's mode
    out = m(torch.rand(1, 3, 64, 64))
    if mode == "train":
        assert isinstance(out, list) and out[0].shape == (1, 3, 8, 8, 7)
    else:
        assert isinstance(out, tuple) and out[0].shape == (1, 3 * (64 + 16 + 4), 7)
    rebuilt = build_model(m.yaml)  # the yaml alone describes the new head
    rebuilt.load_state_dict(m.state_dict())
    reset_detect_head(m, 5)
    assert m.names == ["0", "1", "2", "3", "4"]
