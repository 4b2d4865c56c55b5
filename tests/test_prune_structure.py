"""Structural moves (issue #27): depth pruning of residual blocks and dropping a detection scale, through the
library, checkpoints, channel pruning, ONNX export with parity, fine-tuning and the prune command."""

from __future__ import annotations

import argparse
import json
import math

import pytest
import torch

import prune.cli as prune_cli
from finetune.runs import read_results
from finetune.trainer import TrainOptions, train
from pipeline.options import PipelineError, PipelineOptions
from pipeline.run import Pipeline
from prune import (
    PruneConfig,
    PruneError,
    block_importance,
    depth_prune,
    drop_scale,
    level_names,
    prune_model,
    remove_blocks,
    residual_blocks,
    save_pruned,
)
from reports.export import check_parity, export_onnx
from reports.onnx_backend import OnnxDetector
from reports.onnx_meta import read_metadata
from tests.test_export import synthetic_images
from tests.test_finetune_train import NO_AUG
from tests.zoo import A2, cfg, randomize_bn, tiny_official
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.checkpoint import load_model, save_checkpoint
from yolo.model import build_model
from yolo.synthetic import make_synthetic_dataset

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::prune.PruneWarning")]


def tiny(name: str = "yolov5s", seed: int = 0) -> torch.nn.Module:
    """yolov5s's layout at width 0.125: backbone C3s with 1, 2, 3, 1 residual blocks, head C3s without."""
    torch.manual_seed(seed)
    m = randomize_bn(build_model(tiny_official(name)), seed=seed).eval()
    m.names = ["a", "b", "c"]
    return m


def zero_residual(model, layer: int, block: int) -> None:
    """Make a block's residual branch output exactly zero: its last BN's gamma and beta, then SiLU(0) = 0."""
    bn = model.model[layer].m[block].cv2.bn
    bn.weight.data.zero_()
    bn.bias.data.zero_()


def parse(*argv: str) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    prune_cli.register(p.add_subparsers())
    return p.parse_args(list(argv))


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_synthetic_dataset(tmp_path_factory.mktemp("d") / "data", n_train=8, n_val=4, img_size=96, seed=3)


# ------------------------------------------------------------------------------------------------ depth


def test_blocks_listed_with_head_blocks_not_removable():
    rows = residual_blocks(tiny())
    assert [(r.layer, r.block) for r in rows if r.residual] == [(2, 0), (4, 0), (4, 1), (6, 0), (6, 1), (6, 2), (8, 0)]
    head = [r for r in rows if not r.residual]
    assert {r.layer for r in head} == {13, 17, 20, 23} and all("not removable" in r.note for r in head)
    with pytest.raises(PruneError, match="no shortcut"):
        remove_blocks(tiny(), [(13, 0)])
    with pytest.raises(PruneError, match="does not exist"):
        remove_blocks(tiny(), [(4, 5)])


def test_zero_residual_block_goes_first_and_outputs_stay(tmp_path):
    model = tiny()
    zero_residual(model, 6, 1)
    x = torch.rand(2, 3, 96, 96)
    scores = block_importance(model, x)
    assert scores[(6, 1)] == 0 and min(v for k, v in scores.items() if k != (6, 1)) > 0
    pruned, table = depth_prune(model, 1, x, imgsz=96)
    assert [(r.layer, r.block) for r in table.removed] == [(6, 1)]
    assert len(pruned.model[6].m) == 2 and pruned.yaml["repeats"] == {"6": 2} and len(model.model[6].m) == 3
    with torch.no_grad():
        torch.testing.assert_close(pruned(x)[0], model(x)[0], atol=1e-4, rtol=0)
    assert table.params_after < table.params_before
    path = save_pruned(tmp_path, pruned, {"imgsz": 96}, None, steps=[table])
    entry = json.loads((tmp_path / "depth_table.json").read_text())
    assert entry["removed"] == [[6, 1, 0.0]] and (tmp_path / "depth_table.txt").is_file()
    again, meta = load_model(path)
    assert meta["history"][-1]["op"] == "depth" and meta["history"][-1]["removed"] == [[6, 1, 0.0]]
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x)[0], pruned(x)[0], atol=1e-2, rtol=1e-2)  # fp16 deliverable
    onnx_path = export_onnx(again, tmp_path / "depth.onnx", 64, metadata={"history": meta["history"]})
    assert check_parity(again, onnx_path, synthetic_images(2), conf_thres=0.001).passed
    assert read_metadata(onnx_path)["prune"][-1]["op"] == "depth"


def test_a_layer_may_lose_every_block_and_channel_pruning_follows(tmp_path):
    model = tiny()
    pruned = remove_blocks(model, [(2, 0), (6, 0), (6, 2)])
    assert len(pruned.model[2].m) == 0 and pruned.yaml["repeats"] == {"2": 0, "6": 1}
    save_checkpoint(tmp_path / "d.pt", pruned)
    again, _ = load_model(tmp_path / "d.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x)[0], pruned(x)[0])
    cut, table = prune_model(again, PruneConfig(ratio=0.3, imgsz=64, round_to=1))
    assert table.channels_after < table.channels_before
    save_pruned(tmp_path / "c", cut, {}, table)
    assert len(load_model(tmp_path / "c" / "pruned.pt")[0].model[2].m) == 0


@pytest.mark.parametrize(
    "build, n, match",
    [(tiny, 8, "only 7 removable"), (tiny, 0, "positive number"),
     (lambda: build_model(cfg([[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "C3", [16, False]], [-1, 1, "Conv", [32, 3, 2]]],
                              [[[1, 2], 1, "Detect", ["nc", "anchors"]]])), 1, "no removable residual blocks")],
)  # fmt: skip
def test_impossible_depth_is_one_line(build, n, match):
    with pytest.raises(PruneError, match=match) as e:
        depth_prune(build(), n, torch.rand(1, 3, 64, 64), imgsz=64)
    assert "\n" not in str(e.value)


# ------------------------------------------------------------------------------------------------ scales


@pytest.mark.parametrize("level, removed, strides", [("P5", [21, 22, 23], [8, 16]), ("P3", [], [16, 32])])
def test_dropped_scale_exports_fewer_anchors_and_reloads(tmp_path, level, removed, strides):
    torch.manual_seed(0)  # fresh BatchNorms: randomized ones leave near-tied boxes that NMS orders either way
    model = build_model(tiny_official("yolov5n")).eval()
    assert level_names(model) == ["P3", "P4", "P5"]
    new, table = drop_scale(model, level, imgsz=128)
    assert table.details()["removed_layers"] == removed and new.stride.tolist() == strides
    assert new.input_stride == 32 and new.detect.nl == 2 and len(new.yaml["anchors"]) == 2
    x = torch.rand(1, 3, 128, 128)
    with torch.no_grad():
        before, after = model(x)[1], new(x)[1]
    kept = [j for j in range(3) if j != table.level]
    for i, j in enumerate(kept):  # the remaining levels compute exactly what they did
        torch.testing.assert_close(after[i], before[j])
    path = save_pruned(tmp_path, new, {"imgsz": 128}, None, steps=[table])
    again, meta = load_model(path)
    assert again.stride.tolist() == strides and meta["history"][-1]["scale"] == level
    onnx_path = export_onnx(again, tmp_path / "s.onnx", 128)
    out = OnnxDetector(onnx_path)(torch.rand(1, 3, 128, 128))
    cells = sum((128 // s) ** 2 for s in strides)
    assert out.shape == (1, 3 * cells, 5 + 3)
    assert read_metadata(onnx_path)["stride"] == 32
    assert check_parity(again, onnx_path, synthetic_images(2), imgsz=128, conf_thres=0.001).passed


def test_dropped_scale_then_depth_then_channels_rebuild(tmp_path):
    new, _ = drop_scale(tiny(), "P5", imgsz=64)
    deep, _ = depth_prune(new, 2, torch.rand(1, 3, 64, 64), imgsz=64)
    cut, _ = prune_model(deep, PruneConfig(ratio=0.2, imgsz=64, round_to=1))
    save_checkpoint(tmp_path / "x.pt", cut)
    again, _ = load_model(tmp_path / "x.pt")
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(again.eval()(x)[0], cut.eval()(x)[0])


@pytest.mark.parametrize("spec, match", [("P7", "detects at P3, P4, P5"), ("3", "level index 0-2"),
                                         ("top", "expected one of")])  # fmt: skip
def test_unknown_level_is_one_line(spec, match):
    with pytest.raises(PruneError, match=match):
        drop_scale(tiny("yolov5n"), spec)


def test_single_level_model_has_no_scale_to_drop():
    one = build_model(cfg([[-1, 1, "Conv", [16, 3, 2]], [-1, 1, "Conv", [32, 3, 2]]],
                          [[[1], 1, "Detect", ["nc", "anchors"]]], anchors=A2[:1]))  # fmt: skip
    with pytest.raises(PruneError, match="single detection level"):
        drop_scale(one, "P4")


@pytest.mark.timeout(600)
@pytest.mark.parametrize("level", ["P5", "P3"])
def test_dropped_scale_fine_tunes(tmp_path, data, level):
    model = build_model(tiny_official("yolov5n"))
    new, table = drop_scale(model, level, imgsz=64)
    weights = save_pruned(tmp_path / "p", new, {"imgsz": 64}, None, steps=[table])
    res = train(TrainOptions(data=str(data), weights=str(weights), epochs=30, batch_size=8, nbs=8, imgsz=64,
                             hyp_overrides={**NO_AUG, "lr0": 0.01}, optimizer="AdamW", noval=True, device="cpu",
                             workers=0, project=str(tmp_path / "runs"), quiet=True))  # fmt: skip
    rows = read_results(res.run_dir / "results.csv")
    loss = [r["train/box_loss"] + r["train/obj_loss"] + r["train/cls_loss"] for r in rows]
    assert all(math.isfinite(v) for v in loss) and loss[-1] < 0.8 * loss[0], loss
    trained, _ = load_model(res.last)
    assert trained.detect.nl == 2


# ------------------------------------------------------------------------------------------------ command line


def test_prune_command_drops_a_scale_and_blocks_then_cuts_channels(tmp_path, data):
    weights = tmp_path / "w.pt"
    save_checkpoint(weights, tiny(), {"imgsz": 64})
    args = parse("prune", "--weights", str(weights), "--data", str(data), "--drop-scale", "P5", "--depth", "2",
                 "--calib-images", "4", "--ratio", "0.2", "--round-to", "1", "--project", str(tmp_path / "runs"))
    res = prune_cli.run_prune(args)
    run = tmp_path / "runs" / "exp"
    for f in ("pruned.pt", "depth_table.csv", "scale_table.json", "prune_table.json"):
        assert (run / f).is_file()
    model, meta = load_model(res["weights"])
    assert [h["op"] for h in meta["history"]] == ["drop_scale", "depth", "prune"]
    blocks = sum(len(m.m) for m in model.model if hasattr(m, "cv3"))
    assert model.detect.nl == 2 and blocks == 11 - 1 - 2  # dropping P5 took one head C3 block


@pytest.mark.parametrize(
    "extra, match",
    [([], "nothing to prune"), (["--depth", "1"], "--depth .*give --data"), (["--drop-scale", "top"], "--drop-scale"),
     (["--drop-scale", "P7"], "--drop-scale P7: this model detects at P3, P4, P5"),
     (["--depth", "0", "--data", "x.yaml"], "--depth 0")],
)  # fmt: skip
def test_prune_command_structural_errors_write_nothing(tmp_path, extra, match):
    weights = tmp_path / "w.pt"
    save_checkpoint(weights, tiny("yolov5n"), {"imgsz": 64})
    args = parse("prune", "--weights", str(weights), "--project", str(tmp_path / "runs"), *extra)
    with pytest.raises(PruneError, match=match) as e:
        args.func(args)
    assert "\n" not in str(e.value)
    assert not (tmp_path / "runs").exists()


@pytest.mark.timeout(600)
def test_pipeline_drops_a_scale_and_blocks_before_the_cut(tmp_path, data):
    weights = save_checkpoint(tmp_path / "w.pt", tiny(), {"imgsz": 64})
    opt = PipelineOptions(data=str(data), weights=str(weights), imgsz=64, batch_size=4, nbs=4, workers=0,
                          sparse_epochs=0, finetune_epochs=1, dense_epochs=0, target_flops=0.8, drop_scale="P5",
                          depth=1, latency_runs=3, threads=[1])  # fmt: skip
    summary = Pipeline(opt, tmp_path / "run", lambda _m: None).run()
    assert {"scale_table.json", "depth_table.json", "prune_table.json"} <= {
        p.name for p in (tmp_path / "run" / "prune").iterdir()}
    finetuned, meta = load_model(summary["models"]["finetuned"])
    assert finetuned.detect.nl == 2
    assert [h["op"] for h in meta["history"]][:3] == ["drop_scale", "depth", "prune"]
    with pytest.raises(PipelineError, match="--drop-scale 'top'"):
        PipelineOptions(data=str(data), weights=str(weights), drop_scale="top").validate()
