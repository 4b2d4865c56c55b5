"""Official YOLOv5 pickles (faked in the test, loaded without their classes), refusals, and our own format."""

from __future__ import annotations

import argparse
import builtins
import copy
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from fake_official import (
    Reduce,
    fake_yolov5_modules,
    official_ckpt,
    randomize_bn,
    save_official,
    shrink_channels,
    tiny_cfg,
    tiny_v5_cfg,
    to_official,
)
from torch import nn

from yolo.checkpoint import (
    FORMAT,
    CheckpointError,
    UnsafeCheckpointError,
    load_model,
    read_checkpoint,
    save_checkpoint,
)
from yolo.model import DetectionModel, build_model, module_shapes, reset_detect_head
from yolo.modules import Conv


@pytest.fixture(autouse=True)
def _no_yolov5_modules():
    """The loader must never import YOLOv5's own packages; the fakes are gone before any load."""
    yield
    leaked = [m for m in sys.modules if m.split(".")[0] in ("models", "yolov5")]
    assert not leaked, leaked


def _model(cfg: dict | None = None, seed: int = 0) -> DetectionModel:
    torch.manual_seed(seed)
    m = randomize_bn(build_model(cfg or tiny_cfg()), seed)
    m.names = ["rider", "helmet"][: m.nc] + [f"c{i}" for i in range(2, m.nc)]
    return m.eval()


X = torch.rand(1, 3, 64, 96, generator=torch.Generator().manual_seed(0))


def _run(m: nn.Module) -> tuple[torch.Tensor, list[torch.Tensor]]:
    m.eval()
    with torch.no_grad():
        return m(X)


def _assert_same_outputs(a: nn.Module, b: nn.Module, atol: float = 1e-6, rtol: float = 1e-6) -> None:
    (da, ra), (db, rb) = _run(a), _run(b)
    torch.testing.assert_close(da, db, atol=atol, rtol=rtol)
    for x, y in zip(ra, rb):
        torch.testing.assert_close(x, y, atol=atol, rtol=rtol)


def _fp16_rounded(m: nn.Module) -> nn.Module:
    return copy.deepcopy(m).half().float()


def _assert_float32(m: nn.Module) -> None:
    dtypes = {t.dtype for t in [*m.parameters(), *m.buffers()] if t.is_floating_point()}
    assert dtypes == {torch.float32}


# ---------------------------------------------------------------- official files


@pytest.mark.parametrize(
    ("prefix", "model_class", "names_as_dict"),
    [
        ("models", "Model", False),  # v6.x
        ("models", "DetectionModel", True),  # v7.0: DetectionModel, names as a dict
        ("yolov5.models", "DetectionModel", True),  # the `yolov5` pip package
    ],
)
def test_official_fp16_checkpoint_loads_as_fp32(tmp_path, prefix, model_class, names_as_dict):
    src = _model()
    path = tmp_path / "official.pt"
    with fake_yolov5_modules(prefix) as fakes:
        fake = to_official(src, fakes, model_class=model_class, names_as_dict=names_as_dict)
        save_official(path, official_ckpt(fake))
    model, meta = load_model(path)
    assert isinstance(model, DetectionModel)
    _assert_float32(model)
    assert model.names == ["rider", "helmet"] and meta["names"] == ["rider", "helmet"]
    assert model.stride.tolist() == [8.0, 16.0, 32.0] and meta["stride"] == [8.0, 16.0, 32.0]
    assert meta["format"] == "official" and meta["epoch"] == -1 and meta["imgsz"] == 640
    assert meta["source"]["path"] == str(path.resolve()) and len(meta["source"]["sha256"]) == 64
    _assert_same_outputs(model, _fp16_rounded(src), atol=1e-5, rtol=1e-5)  # exactly the stored weights
    dec, raw = _run(model)
    dec_src, raw_src = _run(src)
    for a, b in zip(raw, raw_src):  # and close to the fp32 source, up to fp16 rounding
        torch.testing.assert_close(a, b, atol=1e-2, rtol=1e-2)
    torch.testing.assert_close(dec[..., 4:], dec_src[..., 4:], atol=1e-3, rtol=1e-3)


def test_official_v50_focus_spp_anchor_grid_namespace_opt(tmp_path):
    """Release v5.0: Focus/SPP/BottleneckCSP, an `anchor_grid` buffer to drop, argparse opt, no ema/date keys."""
    src = _model(tiny_v5_cfg())
    path = tmp_path / "v50.pt"
    with fake_yolov5_modules() as fakes:
        fake = to_official(src, fakes, anchor_grid_buffer=True)
        assert "model.24.anchor_grid" in fake.state_dict()
        opt = argparse.Namespace(img_size=[320, 320], batch_size=16, weights="yolov5s.pt")
        ckpt = {"epoch": -1, "best_fitness": None, "training_results": None, "model": fake.half(), "optimizer": None}
        save_official(path, {**ckpt, "opt": opt})
    model, meta = load_model(path)
    assert not any("anchor_grid" in k for k in model.state_dict())
    assert [type(model.model[i]).__name__ for i in (0, 2, 8)] == ["Focus", "BottleneckCSP", "SPP"]
    assert meta["imgsz"] == 320 and meta["date"] is None
    _assert_float32(model)
    _assert_same_outputs(model, _fp16_rounded(src), atol=1e-5, rtol=1e-5)


def test_official_ema_is_preferred_over_model(tmp_path):
    raw_model, ema_model = _model(seed=1), _model(seed=2)
    path = tmp_path / "ema.pt"
    with fake_yolov5_modules() as fakes:
        save_official(path, official_ckpt(to_official(raw_model, fakes), ema=to_official(ema_model, fakes)))
    model, _ = load_model(path)
    _assert_same_outputs(model, _fp16_rounded(ema_model), atol=1e-5, rtol=1e-5)
    with pytest.raises(AssertionError):
        _assert_same_outputs(model, _fp16_rounded(raw_model), atol=1e-3, rtol=1e-3)


@pytest.mark.parametrize("layout", ["ema_only", "bare_model"])
def test_official_ema_only_and_bare_pickled_model(tmp_path, layout):
    src = _model()
    path = tmp_path / f"{layout}.pt"
    with fake_yolov5_modules() as fakes:
        fake = to_official(src, fakes).half()
        save_official(path, official_ckpt(None, ema=fake) if layout == "ema_only" else fake)
    model, _ = load_model(path)
    _assert_same_outputs(model, _fp16_rounded(src), atol=1e-5, rtol=1e-5)


def test_official_activation_is_inferred_from_layers(tmp_path):
    """YOLOv5 variants trained with LeakyReLU whose yaml has no `activation` key (the act is a module attribute)."""
    src = _model(tiny_cfg(activation="nn.LeakyReLU(0.1)"))
    path = tmp_path / "leaky.pt"
    with fake_yolov5_modules() as fakes:
        fake = to_official(src, fakes)
        del fake.yaml["activation"]
        save_official(path, official_ckpt(fake))
    model, _ = load_model(path)
    acts = [c.act for c in model.modules() if isinstance(c, Conv)]
    assert all(isinstance(a, nn.LeakyReLU) and a.negative_slope == pytest.approx(0.1) for a in acts)
    _assert_same_outputs(model, _fp16_rounded(src), atol=1e-5, rtol=1e-5)


def test_official_with_unknown_module_or_wrong_weights(tmp_path):
    src = _model()
    with fake_yolov5_modules() as fakes:
        fake = to_official(src, fakes)
        fake.yaml["backbone"][2] = [-1, 3, "C3TR", [128]]
        save_official(tmp_path / "c3tr.pt", official_ckpt(fake))
        fake = to_official(src, fakes)
        fake.yaml["width_multiple"] = 0.25
        save_official(tmp_path / "wide.pt", official_ckpt(fake))
    with pytest.raises(CheckpointError, match="C3TR"):
        load_model(tmp_path / "c3tr.pt")
    with pytest.raises(CheckpointError, match="do not fit"):
        load_model(tmp_path / "wide.pt")


# ---------------------------------------------------------------- refusals


def _evil(marker: Path, kind: str) -> Reduce:
    touch = f"__import__('pathlib').Path({str(marker)!r}).touch()"
    return {
        "os.system": Reduce(os.system, f"touch {marker}"),
        "eval": Reduce(builtins.eval, touch),
        "exec": Reduce(builtins.exec, touch),
        "Popen": Reduce(subprocess.Popen, ["touch", str(marker)]),
        "torch.save": Reduce(torch.save, "pwned", str(marker)),
    }[kind]


@pytest.mark.parametrize("kind", ["os.system", "eval", "exec", "Popen", "torch.save"])
@pytest.mark.parametrize("where", ["top", "nested", "legacy"])
def test_malicious_pickle_is_refused_before_running(tmp_path, kind, where):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pt"
    evil = _evil(marker, kind)
    if where == "nested":  # hidden in an otherwise valid official checkpoint
        with fake_yolov5_modules() as fakes:
            save_official(path, official_ckpt(to_official(_model(), fakes), opt=evil))
    else:
        torch.save({"model": evil}, path, _use_new_zipfile_serialization=where != "legacy")
    with pytest.raises(UnsafeCheckpointError) as e:
        load_model(path)
    assert str(path) in str(e.value) and "refused" in str(e.value)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("model_class", "head_class", "what"),
    [
        ("SegmentationModel", "Segment", "segmentation"),
        ("DetectionModel", "Segment", "segmentation"),
        ("ClassificationModel", "Classify", "classification"),
    ],
)
def test_segmentation_and_classification_models_are_refused(tmp_path, model_class, head_class, what):
    path = tmp_path / f"{what}.pt"
    with fake_yolov5_modules() as fakes:
        if model_class == "ClassificationModel":
            fake = fakes["ClassificationModel"]()
            fake.model = nn.Sequential(nn.Conv2d(3, 8, 3), fakes["Classify"]())
            fake.names = ["cat", "dog"]
        else:
            fake = to_official(_model(), fakes, model_class=model_class, head_class=head_class)
        save_official(path, official_ckpt(fake))
    with pytest.raises(CheckpointError, match=what) as e:
        load_model(path)
    assert "\n" not in str(e.value) and str(path) in str(e.value)


def _garbage(seed: int, head: bytes) -> bytes:
    r = random.Random(seed)
    return head + bytes(r.getrandbits(8) for _ in range(r.choice([3, 64, 2000])))


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"not a checkpoint\n" * 20,
        b"nc: 80\nnames: [person]\n",
        *(_garbage(s, b"") for s in range(4)),
        *(_garbage(s, b"PK\x03\x04") for s in range(4)),  # looks like a zip (a torch file) at first
        *(_garbage(s, b"\x80\x02") for s in range(6)),  # looks like a pickle at first
    ],
)
def test_non_torch_file_is_a_checkpoint_error(tmp_path, content):
    path = tmp_path / "weights.pt"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="weights.pt"):
        load_model(path)


def test_plain_state_dict_and_truncated_file(tmp_path):
    m = _model()
    torch.save(m.state_dict(), tmp_path / "sd.pt")
    with pytest.raises(CheckpointError, match="not a YOLOv5 detector checkpoint"):
        load_model(tmp_path / "sd.pt")
    save_checkpoint(tmp_path / "ours.pt", m)
    data = (tmp_path / "ours.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="cut.pt"):
        load_model(tmp_path / "cut.pt")


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "nope" / "yolov5n.pt"
    with pytest.raises(CheckpointError, match=str(path)):
        load_model(path)
    with pytest.raises(CheckpointError, match=str(path)):
        read_checkpoint(path)


# ---------------------------------------------------------------- our format


def test_round_trip_preserves_outputs_names_stride_history(tmp_path):
    m = _model()
    history = [{"op": "prune", "ratio": 0.4, "table": {"model.0.conv": [16, 8]}}]
    meta = {"history": history, "imgsz": 320, "source": {"path": "/x/yolov5n.pt"}, "epoch": 7}
    path = save_checkpoint(tmp_path / "run" / "best.pt", m, meta, extra={"optimizer": {"lr": 0.01}})
    assert sorted(os.listdir(path.parent)) == ["best.pt"]  # no temp files left behind
    model, meta2 = load_model(path)
    _assert_same_outputs(model, m, atol=0, rtol=0)
    assert model.names == ["rider", "helmet"] and model.stride.tolist() == [8.0, 16.0, 32.0]
    assert meta2["format"] == FORMAT and meta2["history"] == history and meta2["imgsz"] == 320
    assert meta2["epoch"] == 7 and meta2["source"]["path"] == "/x/yolov5n.pt"
    assert "train_state" not in meta2 and "state_dict" not in meta2

    raw = torch.load(path, map_location="cpu", weights_only=True)  # plain types and tensors only
    assert raw["format"] == FORMAT and raw["names"] == ["rider", "helmet"] and raw["stride"] == [8.0, 16.0, 32.0]
    anchors_px = torch.tensor(tiny_cfg()["anchors"], dtype=torch.float32).view(3, 3, 2)
    torch.testing.assert_close(torch.tensor(raw["anchors"]), anchors_px)
    assert raw["arch"]["yaml"]["backbone"] == tiny_cfg()["backbone"]
    assert raw["train_state"] == {"optimizer": {"lr": 0.01}}
    assert read_checkpoint(path)["history"] == history


def test_round_trip_of_hand_pruned_and_fp16_model(tmp_path):
    m = _model()
    shrink_channels(m, "model.0.conv", "model.0.bn", "model.1.conv", [0, 1, 4, 6, 7])  # 8 -> 5
    shrink_channels(m, "model.2.m.0.cv1.conv", "model.2.m.0.cv1.bn", "model.2.m.0.cv2.conv", [2, 5])  # 8 -> 2
    shapes = module_shapes(m)
    path = save_checkpoint(tmp_path / "pruned.pt", m)
    model, _ = load_model(path)
    assert module_shapes(model) == shapes
    _assert_same_outputs(model, m, atol=0, rtol=0)

    save_checkpoint(tmp_path / "half.pt", copy.deepcopy(m).half())
    model16, _ = load_model(tmp_path / "half.pt")
    _assert_float32(model16)
    _assert_same_outputs(model16, _fp16_rounded(m), atol=1e-5, rtol=1e-5)


def test_saved_names_follow_the_model_not_stale_meta(tmp_path):
    """load -> new head for 2 classes -> save with the loaded meta: the file must describe the new head."""
    src = _model(tiny_cfg(nc=80))
    path = tmp_path / "coco.pt"
    save_checkpoint(path, src, {"history": [{"op": "train"}]})
    model, meta = load_model(path)
    reset_detect_head(model, 2, names=["With Helmet", "Without Helmet"])
    path2 = save_checkpoint(tmp_path / "helmets.pt", model, meta)
    model2, meta2 = load_model(path2)
    assert model2.nc == 2 and model2.names == ["With Helmet", "Without Helmet"]
    assert meta2["names"] == ["With Helmet", "Without Helmet"]
    assert meta2["history"] == [{"op": "train"}]
    _assert_same_outputs(model2, model, atol=0, rtol=0)


def test_read_checkpoint_refuses_official_files(tmp_path):
    with fake_yolov5_modules() as fakes:
        save_official(tmp_path / "official.pt", official_ckpt(to_official(_model(), fakes)))
    with pytest.raises(CheckpointError, match=FORMAT):
        read_checkpoint(tmp_path / "official.pt")


@pytest.mark.parametrize("fail", ["torch.save", "os.replace", "fsync"])
def test_atomic_write_keeps_the_old_file_on_failure(tmp_path, monkeypatch, fail):
    path = tmp_path / "last.pt"
    save_checkpoint(path, _model(seed=1))
    old = path.read_bytes()
    real_save = torch.save

    def partial_save(obj, f, *a, **k):
        data = b"PK\x03\x04 half-written"
        if isinstance(f, (str, os.PathLike)):
            Path(f).write_bytes(data)
        else:
            f.write(data)
        raise OSError("disk full")

    def boom(*a, **k):
        raise OSError("disk full")

    if fail == "torch.save":
        monkeypatch.setattr(torch, "save", partial_save)
    elif fail == "os.replace":
        monkeypatch.setattr(os, "replace", boom)
    else:
        monkeypatch.setattr(os, "fsync", boom)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(path, _model(seed=2))
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == old
    assert sorted(os.listdir(tmp_path)) == ["last.pt"]
    load_model(path)  # still a complete, loadable file
