"""One helper per job (issue #30): image sizes and strides, plain metadata, file hashes, and a PruneConfig that is
checked once, where it is built."""

from __future__ import annotations

import hashlib
import math

import pytest
import torch
from torch import nn

from prune.config import PruneConfig, PruneError
from reports.export import ExportError
from yolo.fileio import file_sha256, plain
from yolo.imgsz import check_imgsz, max_stride
from yolo.model import build_model


def test_check_imgsz_rounds_up_or_refuses_as_asked():
    assert check_imgsz(70, 32, round_up=True) == (96, 96)
    assert check_imgsz((64, 100), 32, round_up=True) == (64, 128)
    assert check_imgsz(64, 32) == (64, 64)
    with pytest.raises(ExportError, match=r"^--imgsz 70: 70 is not a multiple of the model's max stride 32"):
        check_imgsz(70, 32, error=ExportError)
    with pytest.raises(ValueError, match=r"^--img: image size must be one or two integers, got \[1, 2, 3\]$"):
        check_imgsz([1, 2, 3], 32, flag="--img")


def test_max_stride_of_a_detector_and_of_a_plain_module():
    assert max_stride(build_model("yolov5n.yaml", nc=2)) == 32
    assert max_stride(nn.Sequential(nn.Conv2d(3, 8, 3))) == 32  # no head: YOLOv5's default
    head_only = nn.Sequential(build_model("yolov5n.yaml", nc=2).model[-1])
    assert max_stride(head_only) == 32  # found on the Detect head when the model itself has no stride


def test_plain_keeps_tensors_for_checkpoints_and_makes_json_for_reports():
    meta = {"t": torch.tensor([1.0, 2.0]), "nan": math.nan, 3: (torch.tensor(4), "x")}
    kept = plain(meta)
    assert torch.equal(kept["t"], meta["t"]) and math.isnan(kept["nan"]) and kept["3"][1] == "x"
    assert plain(meta, for_json=True) == {"t": [1.0, 2.0], "nan": None, "3": [4, "x"]}


def test_file_sha256(tmp_path):
    p = tmp_path / "f.bin"
    p.write_bytes(b"x" * (3 << 20))
    assert file_sha256(p) == hashlib.sha256(p.read_bytes()).hexdigest()


@pytest.mark.parametrize("kwargs, match", [
    ({"ratio": 1.5}, "ratio 1.5 is outside"), ({"ratio": 0.2, "target_flops": 0.5}, "exactly one"),
    ({"importance": "x"}, "importance 'x' unknown"), ({"imgsz": 8}, "imgsz 8 is too small"),
])  # fmt: skip
def test_prune_config_is_checked_where_it_is_built(kwargs, match):
    with pytest.raises(PruneError, match=match):
        PruneConfig(**kwargs)


def test_prune_config_from_a_mapping_or_flags():
    with pytest.raises(PruneError, match=r"^unknown prune setting 'ratoi'; known: ratio, ") as e:
        PruneConfig.from_dict({"ratoi": 0.3})
    assert "\n" not in str(e.value)
    with pytest.raises(PruneError, match=r"^--target-flops 2 is outside \(0, 1\]"):
        PruneConfig.from_flags(target_flops=2)
    cfg = PruneConfig(imgsz=128, ignore="model.0.*")  # no amount yet: a sweep gives its own
    assert cfg.ignore == ("model.0.*",)
    with pytest.raises(PruneError, match="exactly one .* got none"):
        _ = cfg.amount
    assert PruneConfig(target_params=0.5).amount == ("target_params", 0.5)
