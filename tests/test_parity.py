"""The real yolov5n.pt loaded by our code gives the official outputs (golden tensors from the official code)."""

from __future__ import annotations

import copy
import sys

import numpy as np
import pytest
import torch

from yolo.checkpoint import load_model, save_checkpoint
from yolo.flops import count_gflops, count_params

pytestmark = pytest.mark.shared


@pytest.fixture(scope="module")
def official(shared_dir):
    model, meta = load_model(shared_dir / "weights" / "yolov5n.pt")
    return model.eval(), meta


@pytest.fixture(scope="module")
def golden(shared_dir):
    with np.load(shared_dir / "reference" / "yolov5n_bus320.npz") as d:
        return {k: torch.from_numpy(d[k]) for k in ("images", "output", "p3", "p4", "p5")}


def _check_outputs(model, golden, atol=1e-4, rtol=1e-5):
    with torch.no_grad():
        dec, raw = model.eval()(golden["images"])
    assert dec.shape == golden["output"].shape == (1, 6300, 85)
    torch.testing.assert_close(dec, golden["output"], atol=atol, rtol=rtol)
    for p, key in zip(raw, ("p3", "p4", "p5")):
        assert p.shape == golden[key].shape
        torch.testing.assert_close(p, golden[key], atol=atol, rtol=rtol)


def test_official_yolov5n_matches_golden_outputs(official, golden):
    model, meta = official
    _check_outputs(model, golden)
    assert next(model.parameters()).dtype == torch.float32


def test_official_yolov5n_metadata_and_size(official):
    model, meta = official
    assert len(model.names) == 80 and model.names[0] == "person" and model.names[-1] == "toothbrush"
    assert meta["names"] == model.names and meta["format"] == "official"
    assert model.stride.tolist() == [8.0, 16.0, 32.0] and meta["stride"] == [8.0, 16.0, 32.0]
    assert meta["imgsz"] == 640
    assert count_params(model) == 1_872_157
    assert abs(count_gflops(model, 640) - 4.5) <= 0.1


def test_loading_imports_no_yolov5_package(shared_dir):
    load_model(shared_dir / "weights" / "yolov5n.pt")
    assert "models" not in sys.modules
    assert not [m for m in sys.modules if m.split(".")[0] in ("models", "utils", "yolov5")]


def test_fused_yolov5n(official, golden):
    fused = copy.deepcopy(official[0]).fuse()
    assert count_params(fused) == 1_867_405
    _check_outputs(fused, golden, atol=1e-4, rtol=1e-4)  # BN folding reorders float arithmetic


def test_official_to_our_format_round_trip(official, golden, tmp_path):
    model, meta = official
    path = save_checkpoint(tmp_path / "yolov5n-slim.pt", model, meta)
    ours, meta2 = load_model(path)
    _check_outputs(ours, golden)
    assert ours.names == model.names and meta2["source"]["path"] == meta["source"]["path"]
    assert meta2["source"]["sha256"] == meta["source"]["sha256"]
