"""ncnn for the ShuffleNetV2 families: YOLO-FastestV2's even/odd channel split (strided slices, which ncnn has no
layer for) rewritten on pnnx's copy of the ONNX, parity of the converted model, and its int8 (depthwise scales).
Skipped when the ncnn extra is not installed (pip install .[ncnn])."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper, numpy_helper

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from reports.export import ExportError, export_onnx  # noqa: E402
from reports.ncnn_backend import NcnnDetector, export_ncnn, export_ncnn_int8  # noqa: E402
from reports.ncnn_int8 import read_param  # noqa: E402
from reports.ncnn_onnx import rewrite_strided_slices, unconverted_layers  # noqa: E402
from reports.runtime_export import check_runtime_parity  # noqa: E402
from tests.zoo import randomize_bn  # noqa: E402
from yolo.model import build_model  # noqa: E402

IMGSZ = 64


def _slices_onnx(path, steps=(2, 2), starts=(0, 1)):
    """y = cat(x[:, s0::k0], x[:, s1::k1]) on a (1, 6, 4, 5) input."""
    inits, nodes = [], []
    for i, (s, k) in enumerate(zip(starts, steps)):
        for name, v in (("st", s), ("en", 2**62), ("ax", 1), ("sp", k)):
            inits.append(numpy_helper.from_array(np.array([v], np.int64), f"{name}{i}"))
        nodes.append(helper.make_node("Slice", ["x", f"st{i}", f"en{i}", f"ax{i}", f"sp{i}"], [f"y{i}"]))
    nodes.append(helper.make_node("Concat", ["y0", "y1"], ["y"], axis=1))
    c = sum(len(range(s, 6, k)) for s, k in zip(starts, steps))
    g = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 6, 4, 5])],
                          [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 4, 5])], inits)  # fmt: skip
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))


def _run(path, x):
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]


def test_strided_channel_slices_are_rewritten_to_the_same_numbers(tmp_path):
    _slices_onnx(tmp_path / "a.onnx")
    assert rewrite_strided_slices(tmp_path / "a.onnx", tmp_path / "b.onnx") == 2
    ops = [n.op_type for n in onnx.load(str(tmp_path / "b.onnx")).graph.node]
    assert ops.count("Reshape") == 4 and ops.count("Slice") == 2
    x = np.random.default_rng(0).random((1, 6, 4, 5), dtype=np.float32)
    assert np.array_equal(_run(tmp_path / "a.onnx", x), _run(tmp_path / "b.onnx", x))
    assert np.array_equal(_run(tmp_path / "b.onnx", x), np.concatenate([x[:, 0::2], x[:, 1::2]], 1))


def test_other_slices_are_left_alone(tmp_path):
    _slices_onnx(tmp_path / "a.onnx", steps=(1, 4), starts=(0, 1))  # step 1, and a step that does not divide c
    assert rewrite_strided_slices(tmp_path / "a.onnx", tmp_path / "b.onnx") == 0


@pytest.fixture(scope="module")
def fastestv2(tmp_path_factory):
    """A YOLO-FastestV2 (randomised BatchNorm) exported to ONNX at 64 px, and its ncnn conversion."""
    d = tmp_path_factory.mktemp("fv2")
    torch.manual_seed(0)
    model = randomize_bn(build_model("yolo-fastestv2", nc=3), seed=1).eval()
    model.names = ["a", "b", "c"]
    onnx_path = export_onnx(model, d / "fv2.onnx", IMGSZ)
    return model, onnx_path, export_ncnn(onnx_path)


def _images():
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, s, dtype=np.uint8) for s in ((48, 64, 3), (64, 40, 3), (64, 64, 3))]


def test_fastestv2_converts_to_ncnn_with_parity(fastestv2):
    model, onnx_path, param = fastestv2
    assert unconverted_layers(param) == {}
    types = {ly.type for ly in read_param(param)[1]}
    assert "ConvolutionDepthWise" in types and "Slice" in types
    assert sum(n.op_type == "Slice" for n in onnx.load(str(onnx_path)).graph.node) >= 2  # the .onnx is untouched
    rep = check_runtime_parity(model, NcnnDetector(param, threads=1), _images())
    assert rep.passed and rep.rel_box <= 1e-3


def test_fastestv2_int8_quantises_depthwise_convs_per_channel(fastestv2):
    model, _, param = fastestv2
    q = export_ncnn_int8(param, _images(), threads=1)
    layers = read_param(q)[1]
    dw = [ly for ly in layers if ly.type == "ConvolutionDepthWise"]
    assert dw and all(ly.params.get("8") == "1" for ly in dw)
    det = NcnnDetector(q, threads=1)
    assert det.input_convention == NcnnDetector(param, threads=1).input_convention  # carried to the int8 model
    rep = check_runtime_parity(model, det, _images(), tol=None)
    assert 0 < rep.rel_score < 0.2


def test_an_operator_pnnx_cannot_convert_is_named(fastestv2, tmp_path, monkeypatch):
    import reports.ncnn_backend as nb

    _, onnx_path, _ = fastestv2
    monkeypatch.setattr(nb, "rewrite_strided_slices", lambda src, dst: shutil.copyfile(src, dst))
    with pytest.raises(ExportError, match=r"no ncnn layer for Tensor\.slice x\d+"):
        export_ncnn(onnx_path, tmp_path)
    assert list(tmp_path.iterdir()) == []
