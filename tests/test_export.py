"""ONNX export: parity with PyTorch, dynamic shapes, metadata, and clear errors (tiny model, 64-128 px)."""

from __future__ import annotations

import copy
import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch

from reports.export import (
    BOX_TOL_PX,
    SCORE_TOL,
    ExportError,
    check_parity,
    export_onnx,
    prune_summary,
)
from reports.onnx_backend import OnnxDetector
from reports.onnx_meta import read_metadata
from reports.parity_match import match_detections
from yolo.model import build_model, load_model_yaml


def tiny_model(nc: int = 3):
    cfg = load_model_yaml("yolov5n")
    cfg.update(width_multiple=0.125, nc=nc)
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    m.names = [f"c{i}" for i in range(nc)]
    return m


def synthetic_images(n: int = 2, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    shapes = [(48, 64), (90, 60), (64, 64)]
    return [rng.integers(0, 256, (*shapes[i % 3], 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def model():
    return tiny_model()


@pytest.fixture(scope="module")
def static_onnx(model, tmp_path_factory):
    history = [{"op": "train"}, {"op": "prune", "ratio": 0.3, "method": "bn", "table": {"a": [1, 2]}}]
    return export_onnx(model, tmp_path_factory.mktemp("static") / "tiny.onnx", 64, metadata={"history": history})


@pytest.fixture(scope="module")
def dynamic_onnx(model, tmp_path_factory):
    return export_onnx(model, tmp_path_factory.mktemp("dyn") / "tiny_dyn.onnx", 64, dynamic="all")


def test_static_export_graph_and_metadata(static_onnx, model):
    m = onnx.load(str(static_onnx))
    onnx.checker.check_model(m)
    assert [i.name for i in m.graph.input] == ["images"]
    assert [o.name for o in m.graph.output] == ["output0"]
    dims = [d.dim_value for d in m.graph.input[0].type.tensor_type.shape.dim]
    assert dims == [1, 3, 64, 64]
    assert not any(n.op_type == "BatchNormalization" for n in m.graph.node)
    meta = read_metadata(m)
    assert meta["names"] == ["c0", "c1", "c2"]
    assert meta["stride"] == 32
    assert meta["imgsz"] == [64, 64]
    assert meta["producer"] == "yolov5-slim"
    assert meta["prune"] == [{"op": "prune", "ratio": 0.3, "method": "bn", "table_entries": 1}]
    out = OnnxDetector(static_onnx)(torch.rand(1, 3, 64, 64))
    assert out.shape == (1, 3 * (8 * 8 + 4 * 4 + 2 * 2), 8)  # anchors x (cx cy w h obj 3 classes)
    leftovers = [p for p in static_onnx.parent.iterdir() if p.name != static_onnx.name]
    assert leftovers == []  # temp files cleaned, only the result remains


def test_static_parity_on_images(static_onnx, model):
    rep = check_parity(model, static_onnx, synthetic_images(2), conf_thres=0.001)
    assert rep.passed, rep.summary()
    assert rep.max_box_diff_px <= BOX_TOL_PX and rep.max_score_diff <= SCORE_TOL
    assert rep.shapes == [[64, 64], [64, 64]]
    assert "parity on 2 image(s)" in rep.summary()


def test_parity_failure_raises(static_onnx, model):
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.model[-1].m[0].bias.add_(1.0)  # a different model: outputs must disagree
    with pytest.raises(ExportError, match="parity check failed"):
        check_parity(other, static_onnx, synthetic_images(1))


def test_parity_bounds_widen_only_to_the_models_own_fp32_error(static_onnx, model, monkeypatch):
    import reports.export as export

    rep = check_parity(model, static_onnx, synthetic_images(1))
    assert 0 < rep.fp32_box_noise_px < BOX_TOL_PX / export.FP32_NOISE_FACTOR  # healthy model: the fixed bounds
    assert rep.box_tol_px == BOX_TOL_PX and rep.score_tol == SCORE_TOL
    monkeypatch.setattr(export, "FP32_NOISE_FACTOR", 1e9)
    wide = check_parity(model, static_onnx, synthetic_images(1))
    assert wide.box_tol_px == pytest.approx(1e9 * wide.fp32_box_noise_px)
    assert wide.score_tol == pytest.approx(1e9 * wide.fp32_score_noise)


def test_dynamic_hw_runs_at_two_shapes(dynamic_onnx, model):
    det = OnnxDetector(dynamic_onnx)
    assert det.input_shape is None and det.batch_fixed is None
    m = copy.deepcopy(model)
    m.detect.export = True
    for shape in [(64, 64), (96, 128)]:
        x = torch.rand(2, 3, *shape)
        with torch.no_grad():
            want = m(x)
        got = det(x)
        assert got.shape == want.shape
        assert (got - want).abs()[..., :4].max() < BOX_TOL_PX
    rep = check_parity(model, dynamic_onnx, synthetic_images(2), imgsz=96)
    assert rep.passed and rep.shapes[0] != rep.shapes[1]  # letterboxed to two different shapes


def test_fixed_batch_one_runs_a_batch_image_by_image(static_onnx):
    det = OnnxDetector(static_onnx)
    x = torch.rand(3, 3, 64, 64)
    out = det(x)
    assert out.shape[0] == 3
    assert torch.allclose(out[1:2], det(x[1:2]), atol=1e-5)
    with pytest.raises(ValueError, match="fixed 64x64"):
        det(torch.rand(1, 3, 96, 96))


def test_fixed_batch_of_two_pads_the_last_chunk(model, tmp_path):
    det = OnnxDetector(export_onnx(model, tmp_path / "b2.onnx", 64, batch=2, simplify=False))
    assert det.batch_fixed == 2
    x = torch.rand(3, 3, 64, 64)
    out = det(x)
    assert out.shape[0] == 3
    assert torch.allclose(out[2], det(x[1:3])[1], atol=1e-5)


def test_imgsz_not_multiple_of_stride(model, tmp_path):
    with pytest.raises(ExportError, match=r"--imgsz 70: 70 is not a multiple of the model's max stride 32") as e:
        export_onnx(model, tmp_path / "x.onnx", 70)
    assert "\n" not in str(e.value)
    with pytest.raises(ExportError, match="--imgsz 64 100"):
        export_onnx(model, tmp_path / "x.onnx", (64, 100))
    assert not (tmp_path / "x.onnx").exists()


def test_unwritable_output_folder(model, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a folder")
    with pytest.raises(ExportError, match=rf"output folder {blocker / 'sub'} is not writable") as e:
        export_onnx(model, blocker / "sub" / "m.onnx", 64)
    assert "\n" not in str(e.value)


@pytest.mark.skipif(hasattr(os, "geteuid") and os.geteuid() == 0, reason="root ignores folder permissions")
def test_read_only_output_folder(model, tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        with pytest.raises(ExportError, match=f"output folder {ro} is not writable"):
            export_onnx(model, ro / "m.onnx", 64)
    finally:
        ro.chmod(0o700)


def test_export_failure_raises_and_leaves_nothing(model, tmp_path, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("unsupported operator FooBar")

    monkeypatch.setattr(torch.onnx, "export", boom)
    with pytest.raises(ExportError, match="torch.onnx.export failed at opset 17: unsupported operator FooBar"):
        export_onnx(model, tmp_path / "m.onnx", 64)
    assert list(tmp_path.iterdir()) == []


def test_slim_failure_falls_back_with_warning(model, tmp_path, monkeypatch, capsys):
    import onnxslim

    def broken(*a, **k):
        raise ValueError("slimmer broke")

    monkeypatch.setattr(onnxslim, "slim", broken)
    p = export_onnx(model, tmp_path / "m.onnx", 64)
    assert "WARNING: onnxslim failed (slimmer broke)" in capsys.readouterr().err
    onnx.checker.check_model(onnx.load(str(p)))


def test_prune_summary_keeps_scalars():
    hist = [{"op": "prune", "ratio": 0.5, "channels": [1, 2], "table": {"x": 1}, "weird": object()}]
    s = prune_summary(hist)
    assert s[0]["ratio"] == 0.5 and s[0]["channels"] == [1, 2] and s[0]["table_entries"] == 1
    json.dumps(s)
    assert prune_summary([{"op": "train"}]) == []


@pytest.mark.shared
def test_yolov5n_bus_parity(shared_dir, tmp_path):
    from yolo.checkpoint import load_model

    model, meta = load_model(shared_dir / "weights" / "yolov5n.pt")
    p = export_onnx(model, tmp_path / "yolov5n.onnx", 320, metadata=meta)
    rep = check_parity(model, p, [shared_dir / "reference" / "bus.jpg"])
    assert rep.passed and rep.nms_matched >= 4, rep.summary()
    assert read_metadata(Path(p))["names"][5] == "bus"


def test_metadata_names_and_stride_as_the_official_export_writes_them(static_onnx, tmp_path):
    """Official export.py: `meta.value = str(v)` of {"stride": int, "names": {0: 'person', ...}}; read_metadata reads
    that and the JSON list earlier versions wrote."""
    raw = {p.key: p.value for p in onnx.load(str(static_onnx)).metadata_props}
    assert raw["names"] == "{0: 'c0', 1: 'c1', 2: 'c2'}" and raw["stride"] == "32"
    old = onnx.load(str(static_onnx))
    next(p for p in old.metadata_props if p.key == "names").value = json.dumps(["a", "b", "c"])
    onnx.save(old, str(tmp_path / "old.onnx"))
    assert read_metadata(tmp_path / "old.onnx")["names"] == ["a", "b", "c"]
    assert OnnxDetector(tmp_path / "old.onnx").names == ["a", "b", "c"]
    assert OnnxDetector(static_onnx).names == ["c0", "c1", "c2"]


def test_export_prints_no_tracer_warnings_and_leaves_filters_alone(model, tmp_path):
    import warnings

    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        export_onnx(model, tmp_path / "w.onnx", 64)
        warnings.warn("after the export", torch.jit.TracerWarning, stacklevel=1)
    tracer = [str(w.message) for w in seen if issubclass(w.category, torch.jit.TracerWarning)]
    assert tracer == ["after the export"]


def test_parity_without_detections_says_so_and_compares_the_top_anchors(static_onnx, model):
    rep = check_parity(model, static_onnx, synthetic_images(2))  # a random tiny model: nothing at conf 0.25
    assert not rep.nms_checked and rep.nms_matched == 0
    text = rep.summary()
    assert "not checked after NMS: no detections at conf 0.25" in text and "0 matched" not in text
    assert rep.topk == 100 and "top 100 anchors by score" in text
    assert rep.max_topk_box_diff_px <= rep.max_box_diff_px <= rep.box_tol_px
    assert rep.to_dict()["nms_checked"] is False
    with_boxes = check_parity(model, static_onnx, synthetic_images(2), conf_thres=0.001)
    assert with_boxes.nms_checked and f"after NMS {with_boxes.nms_matched} matched" in with_boxes.summary()


def test_nms_tie_is_told_apart_from_a_missing_detection():
    """Two near-equal overlapping boxes: NMS keeps one in each backend. The one kept only by PyTorch is in ONNX
    Runtime's candidates before NMS (a tie: tolerated, counted); a box neither backend's candidates hold is not."""
    kept_pt = np.array([[10, 10, 50, 50, 0.800, 0]], dtype=np.float32)
    kept_ox = np.array([[13, 10, 53, 50, 0.801, 0]], dtype=np.float32)  # IoU 0.86 with the other: not paired
    pool_pt = np.concatenate([kept_pt, kept_ox])
    pool_ox = np.concatenate([kept_ox, kept_pt + np.array([0, 0, 0, 0, 2e-5, 0], dtype=np.float32)])
    _, _, unmatched, borderline, ties = match_detections(kept_pt, kept_ox, 0.25, 1e-4, 0.05, pool_pt, pool_ox)
    assert (unmatched, borderline, ties) == (0, 0, 2)
    lonely = np.array([[100, 100, 140, 140, 0.7, 1]], dtype=np.float32)
    _, _, unmatched, _, ties = match_detections(np.concatenate([kept_pt, lonely]), kept_ox, 0.25, 1e-4, 0.05,
                                                 pool_pt, pool_ox)
    assert (unmatched, ties) == (1, 2)
    _, _, unmatched, _, ties = match_detections(kept_pt, kept_ox, 0.25, 1e-4, 0.05)  # without the pools: no excuse
    assert (unmatched, ties) == (2, 0)


def test_a_degenerate_box_pairs_by_its_corners_when_its_iou_cannot_tell():
    """A box 0.01 px high (an untrained cut makes them) moved by 1e-3 px has IoU 0.89 with itself: still one box."""
    a = np.array([[520.1802, 643.94885, 532.55237, 643.95825, 0.89, 44]], dtype=np.float32)
    b = np.array([[520.1814, 643.9483, 532.5514, 643.9577, 0.89, 44]], dtype=np.float32)
    box_d, _, unmatched, _, _ = match_detections(a, b, 0.25, 1e-4, 0.05)
    assert unmatched == 0 and len(box_d) == 1 and box_d[0] < 0.01
    far = b + np.array([0, 1.0, 0, 1.0, 0, 0], dtype=np.float32)  # the same size 1 px lower: another box
    assert match_detections(a, far, 0.25, 1e-4, 0.05)[2] == 2
