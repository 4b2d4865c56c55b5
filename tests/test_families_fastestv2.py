"""YOLO-FastestV2 family: blocks, the yaml build (size as published), the authors' two checkpoints, and parity
with their own code's outputs on bus.jpg (`../shared/reference/fastestv2_bus352.npz`)."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from finetune.distill import Distiller, TeacherError, check_compatible
from prune import PruneConfig, apply_plan, build_graph, plan_pruning, prune_model, save_pruned
from reports.detect import TorchPredictor, predict
from reports.export import check_parity, export_onnx
from reports.imaging import prepare
from reports.onnx_backend import OnnxDetector
from reports.onnx_meta import read_metadata
from reports.quantize import ImageCalibrationReader
from tests.zoo import randomize_bn, zero_removed_gammas
from yolo.boxes import scale_boxes
from yolo.checkpoint import CheckpointError, load_model, save_checkpoint
from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import InputConvention, from_meta
from yolo.convention import parse as parse_convention
from yolo.data import load_data_yaml, load_image
from yolo.data.dataset import DetectionDataset
from yolo.data.resize import resize_linear
from yolo.fastestv2 import DWConvBlock, FastestDetect, ShuffleV2Block, split_even_odd
from yolo.fastestv2_loss import FastestV2Loss, build_loss
from yolo.fastestv2_weights import AuthorsWeightsError, authors_rows_in_our_order, head_outputs, load_backbone
from yolo.flops import count_gflops, count_params
from yolo.hyp import load_hyp
from yolo.model import build_model, module_shapes
from yolo.nms import non_max_suppression
from yolo.synthetic import make_synthetic_dataset
from yolo.val import ScoringError, evaluate

COCO = "weights/yolo-fastestv2-coco.pth"
BACKBONE = "weights/shufflenetv2-x0.5-backbone.pth"
GOLDEN = "reference/fastestv2_bus352.npz"


# ------------------------------------------------------------------------------------------------ blocks


def test_shuffle_v2_block_is_even_odd_split_then_plain_concat():
    torch.manual_seed(0)
    b = randomize_bn(ShuffleV2Block(16, 16, 1)).eval()
    x = torch.randn(2, 16, 8, 8)
    with torch.no_grad():
        ref = torch.cat((x[:, 0::2], b.branch_main(x[:, 1::2])), 1)
        assert torch.equal(b(x), ref)
    even, odd = split_even_odd(x)
    assert torch.equal(even, x[:, 0::2]) and torch.equal(odd, x[:, 1::2])
    b2 = ShuffleV2Block(8, 24, 2)
    assert b2(torch.randn(1, 8, 8, 8)).shape == (1, 24, 4, 4)
    with pytest.raises(ValueError, match="keeps an even width"):
        ShuffleV2Block(8, 16, 1)


def test_dwconv_block_layout_and_fuse():
    torch.manual_seed(0)
    b = randomize_bn(DWConvBlock(8, 8, 5)).eval()
    assert [type(m).__name__ for m in b.block] == [
        "Conv2d", "BatchNorm2d", "ReLU", "Conv2d", "BatchNorm2d", "Conv2d", "BatchNorm2d", "ReLU", "Conv2d",
        "BatchNorm2d",
    ]  # fmt: skip
    x = torch.randn(1, 8, 10, 10)
    with torch.no_grad():
        y = b(x)
        b.fuse()
        assert torch.allclose(b(x), y, atol=1e-5)


# ------------------------------------------------------------------------------------------------ model


def test_build_size_as_published():
    m = build_model("yolo-fastestv2").eval()
    assert isinstance(m.detect, FastestDetect) and m.stride.tolist() == [16.0, 32.0]
    assert count_params(m) == 243_095  # trainable parameters
    # the authors' file holds 251,664 numbers (parameters + BatchNorm statistics); ours adds the 12 anchors
    assert sum(v.numel() for k, v in m.state_dict().items() if not k.endswith("anchors")) == 251_664
    assert abs(count_gflops(m, 352) - 0.2128) < 5e-4  # 2 FLOPs per multiply-accumulate; authors: 0.212
    assert all(bn.eps == 1e-5 for bn in m.modules() if isinstance(bn, torch.nn.BatchNorm2d))
    anchors = (m.detect.anchors * m.stride.view(-1, 1, 1)).view(2, 6)
    assert torch.allclose(anchors[0], torch.tensor([12.64, 19.39, 37.88, 51.48, 55.71, 138.31]))


def test_decoded_follows_the_project_convention():
    torch.manual_seed(0)
    m = build_model("yolo-fastestv2", nc=4).eval()
    with torch.no_grad():
        decoded, maps = m(torch.rand(2, 3, 64, 96))
    assert decoded.shape == (2, 3 * (4 * 6 + 2 * 3), 9)
    assert [t.shape for t in maps] == [(2, 3, 4, 6, 9), (2, 3, 2, 3, 9)]
    probs = decoded[..., 5:]
    assert torch.allclose(probs.sum(-1), torch.ones(2, decoded.shape[1]), atol=1e-5)  # softmax, not sigmoid
    first = decoded[:, : 4 * 6 * 3].view(2, 3, 4 * 6, 9)  # (anchor, cell) rows: one class vector per cell
    assert torch.allclose(first[:, 0, :, 5:], first[:, 2, :, 5:])
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        eval_out = m(x)[0]
        m.detect.export = True
        assert torch.equal(m(x), eval_out)  # export mode: the decoded tensor alone


# ------------------------------------------------------------------------------------------------ checkpoints


def test_coco_checkpoint_reproduces_the_authors_outputs(shared_dir):
    model, meta = load_model(shared_dir / COCO)
    model.eval()
    assert meta["input"] == {"resize": "stretch", "channels": "bgr"} and meta["imgsz"] == 352
    z = np.load(shared_dir / GOLDEN)
    decoded, raw = head_outputs(model, torch.from_numpy(z["images"]))
    for i, r in enumerate(raw):
        assert r.shape == z[f"raw{i}"].shape
        assert (r - torch.from_numpy(z[f"raw{i}"])).abs().max().item() < 1e-4, f"raw{i}"
    golden = authors_rows_in_our_order(torch.from_numpy(z["decoded"]), (22, 11))
    with torch.no_grad():  # our decode of their raw maps: within 1e-4 (pixels and probabilities)
        ours, _ = model.detect.from_raw([torch.from_numpy(z[f"raw{i}"]) for i in range(6)])
    assert (ours - golden).abs().max().item() < 1e-4
    # end to end: scores within 1e-4; boxes (pixels up to 352, float32 ulp 3e-5) within 1e-5 relative, the
    # raw maps' few-1e-6 differences (conv algorithms) magnified by the wh decode (8 * sigmoid * anchor)
    err = (decoded - golden).abs()
    assert err[..., 4:].max().item() < 1e-4
    assert (err[..., :4] / golden[..., :4].abs().clamp(min=1)).max().item() < 1e-5
    dets = non_max_suppression(decoded, conf_thres=0.3, iou_thres=0.4)[0]  # class-aware, one label per box
    ref = torch.from_numpy(z["nms"])
    assert dets.shape == ref.shape
    assert torch.equal(dets[:, 5], ref[:, 5])
    assert torch.allclose(dets[:, :5], ref[:, :5], atol=1e-3)


def test_backbone_checkpoint_starts_a_new_model(shared_dir):
    state = torch.load(shared_dir / BACKBONE, map_location="cpu", weights_only=True)
    model = load_backbone(build_model("yolo-fastestv2", nc=3), state)
    assert torch.equal(model.model[0].conv[0].weight, state["first_conv.0.weight"])
    assert torch.equal(model.model[6][2].branch_main[3].weight, state["stage4.3.branch_main.3.weight"])
    assert model.nc == 3
    with pytest.raises(CheckpointError, match="backbone-only state_dict starts a new model with --backbone"):
        load_model(shared_dir / BACKBONE)


def test_mismatched_state_dicts_fail_in_one_line(tmp_path):
    full = build_model("yolo-fastestv2", nc=2)
    with pytest.raises(AuthorsWeightsError, match="not the authors' ShuffleNetV2"):
        load_backbone(full, {"foo.weight": torch.zeros(1)})
    bad = {"first_conv.0.weight": torch.zeros(8, 3, 3, 3), "stage4.0.branch_main.0.weight": torch.zeros(1)}
    with pytest.raises(AuthorsWeightsError, match="does not fit yolo-fastestv2's backbone"):
        load_backbone(full, bad)
    p = tmp_path / "other.pth"
    torch.save({"output_cls_layers.weight": torch.zeros(2, 72, 1, 1), "backbone.first_conv.0.weight": torch.zeros(1),
                "backbone.extra.weight": torch.zeros(1)}, p)
    with pytest.raises(CheckpointError, match=r"other.pth: key 'backbone.extra.weight' is not part of") as e:
        load_model(p)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ input convention


def test_convention_parse_and_meta():
    assert parse_convention("stretch-bgr") == InputConvention("stretch", "bgr") == parse_convention("Stretch,BGR")
    assert from_meta({}) == DEFAULT_CONVENTION == InputConvention("letterbox", "rgb")
    with pytest.raises(ValueError, match="expected resize letterbox/stretch"):
        parse_convention("squash-rgb")


def test_dataset_feeds_stretched_bgr_and_maps_boxes_back(tmp_path):
    data = load_data_yaml(make_synthetic_dataset(tmp_path / "d", n_train=1, n_val=2, img_size=96, seed=1))
    kw = dict(img_size=64, names=data.names, cache="no")
    plain = DetectionDataset(data.val, **kw)
    bgr = DetectionDataset(data.val, convention=InputConvention("stretch", "bgr"), **kw)
    img, labels, path, shapes = bgr.get(0, np.random.default_rng(0))
    (h0, w0), ratio_pad = shapes
    assert img.shape == (3, 64, 64) and ratio_pad[2] == "stretch"
    rgb = load_image(path, 64, stretch=True)[0]
    assert torch.equal(img, torch.from_numpy(np.ascontiguousarray(rgb[..., ::-1].transpose(2, 0, 1))))
    assert torch.equal(labels, plain.get(0, np.random.default_rng(0))[1]) or h0 != w0  # normalised boxes kept
    box = torch.tensor([[0.0, 0.0, 64.0, 32.0]])
    assert scale_boxes((64, 64), box, (h0, w0), ratio_pad).tolist() == [[0.0, 0.0, float(w0), h0 / 2]]
    with pytest.raises(ValueError, match="rect batches do not apply"):
        DetectionDataset(data.val, rect=True, convention=InputConvention("stretch", "rgb"), **kw)


def test_checkpoint_carries_its_convention_and_val_refuses_another(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", n_train=1, n_val=2, img_size=64, seed=2)
    model = build_model("yolo-fastestv2", nc=3)
    model.input_convention = InputConvention("stretch", "bgr")
    save_checkpoint(tmp_path / "m.pt", model)
    loaded, meta = load_model(tmp_path / "m.pt")
    assert meta["input"] == {"resize": "stretch", "channels": "bgr"}
    assert loaded.input_convention == InputConvention("stretch", "bgr")
    kw = dict(imgsz=64, batch_size=2, workers=0, progress=False)
    res = evaluate(loaded.eval(), data, **kw)
    assert res["input_convention"] == "stretch-bgr"
    with pytest.raises(ScoringError, match="trained on stretch-bgr input, scoring was asked with letterbox-rgb") as e:
        evaluate(loaded, data, convention=DEFAULT_CONVENTION, **kw)
    assert "\n" not in str(e.value)
    res = evaluate(loaded, data, convention=DEFAULT_CONVENTION, allow_convention_mismatch=True, **kw)
    assert res["input_convention"] == "letterbox-rgb"


# ------------------------------------------------------------------------------------------------ training


def test_one_training_step_lowers_the_authors_loss():
    torch.manual_seed(0)
    model = build_model("yolo-fastestv2", nc=3).train()
    hyp = load_hyp(None)
    loss_fn = build_loss(model, hyp, 64)
    assert isinstance(loss_fn, FastestV2Loss)
    # YOLOv5's gains, scaled for 2 levels, 3 classes and 64 px (not the authors' COCO-tuned 3.2 / 64 / 32)
    want = {"box": hyp["box"] * 1.5, "obj": hyp["obj"] * (64 / 640) ** 2 * 1.5, "cls": hyp["cls"] * 3 / 80 * 1.5}
    assert {k: loss_fn.hyp[k] for k in want} == pytest.approx(want)
    x = torch.rand(2, 3, 64, 64)
    targets = torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.5], [1, 2, 0.3, 0.6, 0.25, 0.3]])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)  # the family's optimizer and lr0
    first, parts = loss_fn(model(x), targets)
    assert torch.isfinite(first) and (parts > 0).all()
    assert first.item() == pytest.approx(parts.sum().item() * 2, rel=1e-6)  # summed over the batch, as YOLOv5's
    first.backward()
    opt.step()
    opt.zero_grad()
    for _ in range(9):
        loss, _ = loss_fn(model(x), targets)
        loss.backward()
        opt.step()
        opt.zero_grad()
    assert loss_fn(model(x), targets)[0].item() < 0.9 * first.item()
    # the authors do not clip gradients; YOLOv5's trainer clips at 10 (finetune/loop.py asks the loss)
    assert loss_fn.max_grad_norm is None and build_loss(build_model("yolov5n"), load_hyp(None), 64).max_grad_norm == 10


# ------------------------------------------------------------------------------------------------ pruning

STRETCH_BGR = InputConvention("stretch", "bgr")


@pytest.fixture(scope="module")
def pruned_setup():
    torch.manual_seed(0)
    model = randomize_bn(build_model("yolo-fastestv2", nc=3), seed=2).eval()
    graph = build_graph(model, 128)  # the 5-D view of the authors' split never finished here (strided slices do)
    return model, graph, plan_pruning(graph, PruneConfig(ratio=0.4, round_to=1, imgsz=128))


def test_prune_graph_protects_the_split_and_the_shared_head(pruned_setup):
    model, graph, _ = pruned_setup
    reasons = {n: why for names, why in graph.protected for n in names.split(", ")}
    for name in ("model.8.block.8", "model.13.block.8", "model.9.block.8", "model.14.block.8"):
        assert "shared by both levels" in reasons[name]  # one 1x1 conv reads both levels' features
    for name in ("model.2.0.branch_main.5", "model.4.3.branch_main.5", "model.6.0.branch_main.5"):
        assert "split/shuffle ties channel positions" in reasons[name]
    producers = {p for g in graph.groups for p in g.producers}
    blocks = [n for n, m in model.named_modules() if isinstance(m, ShuffleV2Block)]
    assert {f"{b}.branch_main.0" for b in blocks} <= producers  # every block's internal channels are prunable
    assert {"model.0.conv.0", "model.7.conv", "model.12.conv", "model.8.block.3", "model.14.block.3"} <= producers
    readers = {m.name for g in graph.groups for m in g.members if m.kind == "in"}
    assert not readers & {"model.15.m.0", "model.15.m.1", "model.15.m.2"}


def test_zero_gamma_channels_are_removed_losslessly(pruned_setup):
    """Masked (gamma = 0 on the planned channels) and physically pruned models agree away from the borders."""
    model, _, plan = pruned_setup
    masked = copy.deepcopy(model)
    zero_removed_gammas(masked, plan)
    assert plan.removed_channels > 0
    pruned = apply_plan(masked, plan).double()
    x = torch.rand(1, 3, 512, 512, dtype=torch.float64)
    with torch.no_grad():
        ref, out = masked.double()(x)[1], pruned(x)[1]
    for r, o in zip(ref, out):
        c = r.shape[2] // 3
        assert (r - o)[:, :, c:-c, c:-c].abs().max().item() < 1e-6


@pytest.mark.filterwarnings("ignore::prune.apply.PruneWarning")  # an unsparsified model: large gammas go
def test_pruned_checkpoint_reloads_trains_and_exports_with_parity(tmp_path):
    torch.manual_seed(0)
    model = randomize_bn(build_model("yolo-fastestv2", nc=3), seed=3)
    model.input_convention = STRETCH_BGR
    pruned, table = prune_model(model, PruneConfig(ratio=0.3, imgsz=64))
    assert table.params_after < table.params_before and any(r.after < r.before for r in table.rows)
    assert any("shared by both levels" in why for _, why in table.protected)
    ckpt = save_pruned(tmp_path / "prune", pruned, {"imgsz": 64}, table)
    loaded, meta = load_model(ckpt)
    assert module_shapes(loaded) == module_shapes(pruned) and loaded.input_convention == STRETCH_BGR
    loss_fn = build_loss(loaded.train(), load_hyp(None), 64)
    x, targets = torch.rand(2, 3, 64, 64), torch.tensor([[0, 1, 0.5, 0.5, 0.4, 0.5], [1, 2, 0.3, 0.6, 0.25, 0.3]])
    opt = torch.optim.SGD(loaded.parameters(), lr=1e-2)  # YOLOv5's lr0: the loss is on YOLOv5's scale
    first = loss_fn(loaded(x), targets)[0]
    first.backward()
    opt.step()
    assert loss_fn(loaded(x), targets)[0].item() < first.item()
    loaded.eval()
    path = export_onnx(loaded, tmp_path / "p.onnx", 64)
    rng = np.random.default_rng(0)
    images = [rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for h, w in ((48, 80), (90, 60))]
    report = check_parity(loaded, path, images)
    assert report.passed and report.max_score_diff < 1e-4, report.summary()
    assert read_metadata(path)["input"] == {"resize": "stretch", "channels": "bgr"}


# ------------------------------------------------------------------------------------------------ exported files


def test_onnx_records_the_convention_and_val_of_the_file_uses_it(tmp_path):
    data = make_synthetic_dataset(tmp_path / "d", n_train=1, n_val=3, img_size=80, seed=4)
    torch.manual_seed(0)
    model = randomize_bn(build_model("yolo-fastestv2", nc=3), seed=4).eval()
    model.input_convention = STRETCH_BGR
    det = OnnxDetector(export_onnx(model, tmp_path / "m.onnx", 64))
    assert det.input_convention == STRETCH_BGR
    kw = dict(imgsz=64, batch_size=1, workers=0, progress=False, rect=False, conf_thres=0.0)
    onnx_res, torch_res = evaluate(det, data, **kw), evaluate(model, data, **kw)
    assert onnx_res["input_convention"] == torch_res["input_convention"] == "stretch-bgr"
    for k in ("map50", "map", "yolo_map50", "precision", "recall"):
        assert abs(onnx_res[k] - torch_res[k]) < 1e-3, k  # an untrained head: fp32 noise reorders tied scores
    with pytest.raises(ScoringError, match="trained on stretch-bgr input"):
        evaluate(det, data, convention=DEFAULT_CONVENTION, **kw)
    plain = build_model("yolo-fastestv2", nc=3).eval()
    assert OnnxDetector(export_onnx(plain, tmp_path / "p.onnx", 64)).input_convention == DEFAULT_CONVENTION


def test_prepare_and_detect_feed_a_stretched_bgr_model_its_own_input():
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 256, (50, 90, 3), dtype=np.uint8)
    x, hw0, ratio_pad, _ = prepare(rgb, 64, convention=STRETCH_BGR)
    want = resize_linear(rgb, (64, 64))[..., ::-1].transpose(2, 0, 1)[None].astype(np.float32) / 255
    assert np.array_equal(x, want) and hw0 == (50, 90) and ratio_pad[2] == "stretch"
    reader = ImageCalibrationReader([rgb], "images", (64, 64), 32, STRETCH_BGR)
    assert np.array_equal(reader.get_next()["images"], want)
    torch.manual_seed(0)
    model = randomize_bn(build_model("yolo-fastestv2", nc=3), seed=5).eval()
    model.input_convention = STRETCH_BGR
    det, _ = predict(TorchPredictor(model), rgb, 64, conf_thres=0.0, max_det=5)
    with torch.no_grad():
        ref = non_max_suppression(model(torch.from_numpy(want))[0], 0.0, 0.45, max_det=5)[0]
    ref[:, [0, 2]] *= 90 / 64  # a gain per axis: stretched, not letterboxed
    ref[:, [1, 3]] *= 50 / 64
    ref[:, [0, 2]], ref[:, [1, 3]] = ref[:, [0, 2]].clamp(0, 90), ref[:, [1, 3]].clamp(0, 50)  # clipped to the image
    assert len(det) == 5 and np.allclose(det[:, :4], ref[:, :4].round().numpy(), atol=1)
    assert np.allclose(det[:, 4], ref[:, 4].numpy(), atol=1e-6)


def test_coco_checkpoint_carries_coco_names(shared_dir):
    model, meta = load_model(shared_dir / COCO)
    assert len(model.names) == 80 and model.names[0] == "person" and model.names[-1] == "toothbrush"
    assert meta["names"] == model.names


# ------------------------------------------------------------------------------------------------ teacher


def test_yolov5_teacher_is_refused_in_one_line():
    with pytest.raises(TeacherError, match="Detect teacher cannot teach a FastestDetect student") as e:
        check_compatible(build_model("yolov5n", nc=3), build_model("yolo-fastestv2", nc=3), "yolov5n.pt")
    assert "\n" not in str(e.value) and "strides 16/32" in str(e.value)


def test_unpruned_fastestv2_teaches_its_pruned_self(pruned_setup):
    teacher, _, plan = pruned_setup
    student = apply_plan(teacher, plan).train()
    hyp = load_hyp(None)
    distiller = Distiller(copy.deepcopy(teacher), student, hyp, 64, balance=[1.0, 0.4])
    x = torch.rand(2, 3, 64, 64)
    t_maps = distiller.teacher_outputs(x)
    same, _ = distiller.loss(t_maps, t_maps)
    assert abs(same.item()) < 1e-6  # softmax class KL, objectness KL and box error all vanish at the teacher
    total, items = distiller.loss(student(x), t_maps)
    assert total.item() > 0 and (items > 0).all()
    total.backward()


def test_training_uses_the_family_optimizer_and_hyperparameters_unless_the_user_sets_them(tmp_path):
    """A FastestV2 run trains with AdamW at the family's lr0 and bias warm-up (recorded in args.yaml / hyp.yaml);
    the user's --optimizer and an override of one key win; a YOLOv5 model keeps SGD."""
    import yaml

    from finetune.trainer import TrainOptions, train

    data = make_synthetic_dataset(tmp_path / "d", n_train=4, n_val=2, img_size=64, seed=1)
    common = dict(data=str(data), cfg="yolo-fastestv2.yaml", epochs=1, batch_size=2, nbs=2, imgsz=64, device="cpu",
                  workers=0, noval=True, quiet=True, project=str(tmp_path / "runs"))  # fmt: skip

    def recorded(name: str) -> tuple[dict, dict]:
        run = tmp_path / "runs" / name
        return yaml.safe_load((run / "args.yaml").read_text()), yaml.safe_load((run / "hyp.yaml").read_text())

    train(TrainOptions(**common, name="family"))
    args, hyp = recorded("family")
    assert (args["optimizer"], hyp["lr0"], hyp["momentum"], hyp["warmup_bias_lr"]) == ("AdamW", 0.001, 0.937, 0.0)
    train(TrainOptions(**common, name="mine", optimizer="SGD", hyp_overrides={"lr0": 0.02}))
    args, hyp = recorded("mine")
    assert (args["optimizer"], hyp["lr0"], hyp["warmup_bias_lr"]) == ("SGD", 0.02, 0.0)
    train(TrainOptions(**{**common, "cfg": "yolov5n.yaml"}, name="v5"))
    args, hyp = recorded("v5")
    assert (args["optimizer"], hyp["lr0"]) == ("SGD", 0.01)
