"""Static int8 quantisation of a tiny model: decode stays float, outputs stay close to fp32."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
import torch

from reports.export import export_onnx
from reports.int8_select import select_int8
from reports.onnx_backend import OnnxDetector
from reports.onnx_meta import read_metadata
from reports.quantize import (
    ImageCalibrationReader,
    Int8Config,
    QuantizeError,
    calibration_stride,
    decode_nodes,
    float_decode_check,
    quantize_int8,
)
from yolo.model import build_model, load_model_yaml


def tiny_model():
    cfg = load_model_yaml("yolov5n")
    cfg.update(width_multiple=0.125, nc=3)
    torch.manual_seed(0)
    m = build_model(cfg).eval()
    m.names = ["a", "b", "c"]
    return m


def images(n: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 256, (64, 48 + 8 * (i % 3), 3), dtype=np.uint8) for i in range(n)]


@pytest.fixture(scope="module")
def fp32(tmp_path_factory):
    return export_onnx(tiny_model(), tmp_path_factory.mktemp("int8") / "tiny.onnx", 64)


@pytest.fixture(scope="module")
def int8(fp32):
    return quantize_int8(fp32, fp32.parent / "tiny-int8.onnx", images(4), Int8Config("u8", "minmax", 4))


def test_decode_nodes_found_from_the_output(fp32):
    names, convs = decode_nodes(onnx.load(str(fp32)))
    assert len(convs) == 6  # two last convolutions (box, scores) per output level
    ops = {n.op_type for n in onnx.load(str(fp32)).graph.node if n.name in names}
    assert {"Sigmoid", "Concat", "Reshape"} <= ops
    assert "Conv" not in ops


def test_int8_keeps_decode_float_and_quantises_the_rest(int8):
    m = onnx.load(str(int8))
    assert float_decode_check(m) == []
    names, convs = decode_nodes(m)
    region = [n for n in m.graph.node if n.name in names]
    assert not any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in region)
    producers = {o: n for n in m.graph.node for o in n.output}
    consumers = [n for n in m.graph.node for i in n.input for c in convs if i == producers_out(producers, c)]
    assert consumers and all(n.op_type != "QuantizeLinear" for n in consumers)  # last convs write float
    assert sum(n.op_type == "QuantizeLinear" for n in m.graph.node) > 20  # the backbone is quantised
    meta = read_metadata(m)
    assert meta["names"] == ["a", "b", "c"] and meta["int8"]["activations"] == "u8"


def producers_out(producers: dict, conv_name: str) -> str:
    return next(o for o, n in producers.items() if n.name == conv_name)


def test_int8_outputs_close_to_fp32(fp32, int8):
    x = torch.from_numpy(np.stack([np.transpose(i[:, :48], (2, 0, 1)) for i in images(2, seed=1)]) / 255.0)
    x = torch.nn.functional.pad(x, (8, 8, 0, 0), value=114 / 255).float()
    a, b = OnnxDetector(fp32)(x), OnnxDetector(int8)(x)
    assert a.shape == b.shape
    d = (a - b).abs()
    assert float(d[..., 4:].max()) < 0.05  # probabilities
    assert float(d[..., :4].mean()) < 1.0  # pixels, on a 64 px input


def test_config_tags_and_errors(fp32, tmp_path):
    c = Int8Config.from_tag("s8-entropy-n16-fhead")
    assert (c.activations, c.method, c.images, c.float_head_convs) == ("s8", "entropy", 16, True)
    assert Int8Config.from_tag("u8").tag == "u8-percentile-n32"
    with pytest.raises(QuantizeError, match="unknown part"):
        Int8Config.from_tag("u8-fast")
    with pytest.raises(QuantizeError, match="--int8-activations"):
        Int8Config("fp8").validate()
    with pytest.raises(QuantizeError, match="needs images"):
        quantize_int8(fp32, tmp_path / "q.onnx", [])


def test_variant_tags_round_trip_every_part():
    c = Int8Config.from_tag("u8-minmax-n8-tensor-rr-qop-qhead-wu8")
    assert (c.per_channel, c.reduce_range, c.operator_format, c.quantize_head_outputs, c.unsigned_weights) == (
        False, True, True, True, True)
    assert Int8Config.from_tag(c.tag) == c
    with pytest.raises(QuantizeError, match="contradict"):
        Int8Config.from_tag("u8-fhead-qhead")


@pytest.mark.parametrize("tag", ["u8-minmax-n4-qhead", "u8-minmax-n4-qop"])
def test_head_outputs_quantised_variants_keep_the_decode_float(fp32, tag):
    """qhead: the last convs write int8 and one Q/DQ pair turns it back to float before the decode; qop: the
    convs are QLinearConv nodes. Either way nothing quantised sits inside the decode, and outputs stay close."""
    q = quantize_int8(fp32, fp32.parent / f"tiny-{tag}.onnx", images(4), Int8Config.from_tag(tag))
    m = onnx.load(str(q))
    assert float_decode_check(m) == []
    ops = {n.op_type for n in m.graph.node}
    assert ("QLinearConv" in ops) == tag.endswith("qop")
    _, convs = decode_nodes(m)
    producers = {o: n for n in m.graph.node for o in n.output}
    heads_out = [producers_out(producers, c) for c in convs]
    users = [n for n in m.graph.node if any(i in heads_out for i in n.input)]
    assert users and all(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in users)  # int8 head outputs
    x = torch.rand(2, 3, 64, 64)
    d = (OnnxDetector(fp32)(x) - OnnxDetector(q)(x)).abs()
    assert float(d[..., 4:].max()) < 0.08


def test_select_without_data_measures_latency(fp32, tmp_path):
    cfgs = [Int8Config("u8", "minmax", 2)]
    sel = select_int8(fp32, tmp_path, images(2), cfgs, rounds=3, warmup=1, log=lambda s: None)
    d = sel.to_dict()
    v = d["variants"][0]
    assert v["error"] is None and v["latency_ms"] > 0 and v["ratio_to_fp32"] > 0
    assert v["map"] is None and v["holds_accuracy"] is None  # no data: accuracy not checked
    assert d["fp32"]["latency_ms"] > 0
    assert (d["chosen"] is None) == (v["ratio_to_fp32"] >= 1.0)
    assert d["reason"]


def test_calibration_runs_in_equal_chunks_of_at_most_four_images():
    """ORT keeps a whole calibration pass in memory (8 GB for 32 images of yolov5n at 640): passes of <= 4 images."""
    assert [calibration_stride(n) for n in (32, 6, 7, 2, 1)] == [4, 3, 1, 2, 1]
    imgs = [np.zeros((8, 8, 3), np.uint8) + i for i in range(6)]
    reader = ImageCalibrationReader(imgs, "images", (32, 32))
    reader.set_range(start_index=3, end_index=6)
    fed = []
    while (batch := reader.get_next()) is not None:
        fed.append(batch["images"])
    assert len(fed) == 3 and all(x.shape == (1, 3, 32, 32) for x in fed)


def test_variant_choice_keeps_fp32_when_no_variant_holds_accuracy(fp32, tmp_path, monkeypatch):
    """Twice as fast but 0.02 mAP50-95 down: fp32 stays the deliverable at tolerance 0.01, int8 is kept at 0.05."""
    import reports.int8_select as selection

    def twice_as_fast(sel, ok, threads, rounds, warmup, log):
        sel.fp32["latency_ms"] = 10.0
        for r in ok:
            r.latency_ms, r.ratio_to_fp32 = 5.0, 0.5

    def two_points_down(sel, ok, data_cfg, tol, eval_kwargs, log):
        sel.fp32.update(map50=0.50, map=0.40)
        for r in ok:
            r.map50, r.map = 0.48, 0.38
            r.holds_accuracy = r.map >= sel.fp32["map"] - tol

    monkeypatch.setattr(selection, "_time_variants", twice_as_fast)
    monkeypatch.setattr(selection, "_score_variants", two_points_down)
    cfgs = [Int8Config("u8", "minmax", 2)]
    strict = select_int8(fp32, tmp_path / "a", images(2), cfgs, data_cfg="data", map_tolerance=0.01, log=print)
    assert strict.chosen is None
    assert "no faster int8 variant keeps mAP50-95 within 0.01" in strict.reason and "fp32 stays" in strict.reason
    loose = select_int8(fp32, tmp_path / "b", images(2), cfgs, data_cfg="data", map_tolerance=0.05, log=print)
    assert loose.chosen == loose.variants[0].path
