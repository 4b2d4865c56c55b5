"""Issue #27 on every family the tool builds besides YOLOv5 (ShuffleNetV2: v5lite-s and yolov5n-shufflenetv2;
RepVGG): a dropped detection scale, removed residual blocks and a latency-targeted cut (width and depth moves)
each leave a model that runs and exports with parity. The latency table is a one-point fake (timing is the
bench's business); the cut's timer is the predictor, so what is tested is that the search, the slicing and the
block removal handle these graphs."""

from __future__ import annotations

import pytest
import torch

import reports.layer_latency as ll
from prune import PruneConfig, PruneError, drop_scale, prune_to_latency
from prune.depth import depth_prune, residual_blocks
from reports.export import check_parity, export_onnx
from reports.onnx_meta import read_metadata
from tests.test_export import synthetic_images
from tests.zoo import randomize_bn, tiny_official
from tests.zoo import single_thread as single_thread  # noqa: F401  (fixture)
from yolo.flops import count_params
from yolo.model import build_model

pytestmark = [pytest.mark.usefixtures("single_thread"), pytest.mark.filterwarnings("ignore::prune.PruneWarning")]
FAMILIES = ["v5lite-s", "yolov5n-shufflenetv2", "yolov5n-repvgg"]
IMGSZ = 64


def family(name: str):
    return randomize_bn(build_model(tiny_official(name, width=0.25)), seed=3).eval()


def images(n: int = 4) -> torch.Tensor:
    return torch.rand(n, 3, IMGSZ, IMGSZ, generator=torch.Generator().manual_seed(0))


def flat_predictor(model) -> ll.TablePredictor:
    """Each conv costs its MACs (a one-point grid at full width, proportional below): a table without timing."""
    specs = ll.conv_specs(model, IMGSZ)
    layers = {n: ll.LayerTable([s.cin], [s.cout], [[1e-6 * s.cin * s.cout * s.k[0] * s.k[1] * s.out_hw / max(
        s.groups, 1)]], s.out_hw) for n, s in specs.items()}  # fmt: skip
    return ll.TablePredictor(ll.LatencyTable(ll.table_key(specs, IMGSZ, 1, 8), layers, rest_a=0.01))


def exports_with_parity(model, tmp_path, anchors_per_cell: int = 3) -> None:
    path = export_onnx(model, tmp_path / "m.onnx", imgsz=IMGSZ)
    rep = check_parity(model, path, synthetic_images(2), imgsz=IMGSZ)
    assert rep.passed, rep.summary()
    strides = [int(s) for s in model.detect.stride]
    cells = sum((IMGSZ // s) ** 2 for s in strides)
    assert read_metadata(path)["stride"] == model.input_stride == 32  # the input still halves five times
    with torch.no_grad():
        out = model(torch.zeros(1, 3, IMGSZ, IMGSZ))[0]
    assert out.shape[1] == cells * anchors_per_cell


@pytest.mark.parametrize("name", FAMILIES)
def test_dropping_p5_leaves_two_levels_that_export(name, tmp_path):
    model = family(name)
    new, table = drop_scale(model, "P5", imgsz=IMGSZ)
    assert new.detect.nl == 2 and [int(s) for s in new.detect.stride] == [8, 16]
    assert count_params(new) < count_params(model) and table.scale == "P5"
    exports_with_parity(new, tmp_path)


@pytest.mark.parametrize("name", FAMILIES)
def test_depth_removes_a_head_block_or_says_there_is_none(name, tmp_path):
    model = family(name)
    removable = [r for r in residual_blocks(model) if r.residual]
    if not removable:
        with pytest.raises(PruneError, match="no removable residual blocks"):
            depth_prune(model, 1, images(), imgsz=IMGSZ)
        return
    pruned, table = depth_prune(model, 1, images(), imgsz=IMGSZ, n_images=4)
    assert sum(r.removed for r in table.rows) == 1 and count_params(pruned) < count_params(model)
    exports_with_parity(pruned, tmp_path)


@pytest.mark.parametrize("name", FAMILIES)
def test_latency_target_with_depth_moves_cuts_and_exports(name, tmp_path):
    model = family(name)
    pred = flat_predictor(model)

    def measure(models):
        return {n: pred.total_ms(ll.model_widths(m)) for n, m in models.items()}

    cfg = PruneConfig(target_speedup=1.5, imgsz=IMGSZ, round_to=1)
    pruned, table = prune_to_latency(model, cfg, pred, measure, moves=("width", "depth"), images=images(),
                                     tolerance=0.1)  # fmt: skip
    lat = table.latency
    assert lat["within_tolerance"] and lat["measured_ms"] <= lat["measured_before_ms"] / 1.5 * 1.1
    assert count_params(pruned) < count_params(model)
    exports_with_parity(pruned, tmp_path)
