"""`export --format ncnn` (pnnx) on a tiny model: parity, files, metadata, and the commands that load the .param.
Skipped when the ncnn extra is not installed (pip install .[ncnn])."""

from __future__ import annotations

import pytest

pytest.importorskip("ncnn")
pytest.importorskip("pnnx")

from reports.backends import load_backend  # noqa: E402
from reports.export import ExportError  # noqa: E402
from tests import runtime_helpers as rh  # noqa: E402
from tests.runtime_helpers import data as data  # noqa: E402, F401  (fixture)
from tests.runtime_helpers import exported as exported  # noqa: E402, F401  (fixture)
from tests.runtime_helpers import work as work  # noqa: E402, F401  (fixture)

FORMAT = "ncnn"


def test_files_written_and_nothing_else(work, exported):
    rh.check_files(work, exported, ["metadata.yaml", "model.ncnn.bin", "model.ncnn.param"])


def test_metadata_read_back(exported):
    rh.check_metadata(exported)
    rh.check_metadata(exported.parent)  # the export folder itself is accepted
    assert load_backend(exported).metadata["converter"]["pnnx"]


def test_parity_with_torch(exported):
    rh.check_parity(exported)
    rh.check_parity_can_fail(exported)


def test_val_detect_benchmark_report_accept_the_param(exported, data, tmp_path):
    rh.check_commands_in_a_subprocess(exported, data, tmp_path, "ncnn")


@pytest.mark.parametrize("module", ["ncnn", "pnnx"])
def test_missing_extra_is_one_line(work, tmp_path, monkeypatch, capsys, module):
    rh.check_missing_extra(work / "tiny.pt", tmp_path / "out", "ncnn", module, monkeypatch, capsys)


@pytest.mark.parametrize("flag, match", [("--int8", "--int8 needs --calib-data"), ("--dynamic", "fixed input size")])
def test_int8_without_data_and_dynamic_are_refused_before_writing(work, tmp_path, flag, match):
    args = rh.parse(["export", "--weights", str(work / "tiny.pt"), "--format", "ncnn", flag,
                     "--out", str(tmp_path)])  # fmt: skip
    with pytest.raises(ValueError, match=match):
        args.func(args)
    assert list(tmp_path.iterdir()) == []


def test_failed_conversion_keeps_the_previous_folder(work, exported, monkeypatch):
    import reports.ncnn_backend as nb

    before = {p.name: p.read_bytes() for p in exported.parent.iterdir()}

    def broken(onnx_copy, shape):
        raise ExportError("pnnx could not convert model.onnx to ncnn: forced")

    monkeypatch.setattr(nb, "_run_pnnx", broken)
    with pytest.raises(ExportError, match="forced"):
        rh.export_cli(work / "tiny.pt", work / "out", "ncnn")
    assert {p.name: p.read_bytes() for p in exported.parent.iterdir()} == before
    assert rh.hidden_leftovers(work / "out") == []


def test_a_missing_bin_is_one_line(exported, tmp_path):
    import shutil

    copy = tmp_path / "m"
    shutil.copytree(exported.parent, copy)
    (copy / "model.ncnn.bin").unlink()
    with pytest.raises(FileNotFoundError, match="model.ncnn.bin not found"):
        load_backend(copy / "model.ncnn.param")


# ------------------------------------------------------------------------------------------- int8


def _layers(param):
    from reports.ncnn_int8 import read_param

    return {ly.name: ly for ly in read_param(param)[1]}


def test_int8_writes_ncnn_int8_and_keeps_the_head_float(work, data, tmp_path):
    from reports.ncnn_int8 import head_convolutions
    from reports.runtime_export import check_runtime_parity

    rh.export_cli(work / "tiny.pt", tmp_path, "ncnn", "--int8", "--calib-data", str(data),
                  "--calib-images", "4", "--int8-map-tol", "1.0")  # fmt: skip
    fp32 = tmp_path / "tiny_ncnn_model" / "model.ncnn.param"
    q = tmp_path / "tiny_int8_ncnn_model" / "model.ncnn.param"
    head = head_convolutions(list(_layers(fp32).values()))
    assert len(head) >= 3  # one or more output convs per level
    convs = {n: ly for n, ly in _layers(q).items() if ly.type in ("Convolution", "ConvolutionDepthWise")}
    assert {n for n, ly in convs.items() if "8" not in ly.params} == set(head)
    assert all(ly.params["8"] == "2" for n, ly in convs.items() if n not in head)
    assert q.with_suffix(".bin").stat().st_size < 0.5 * fp32.with_suffix(".bin").stat().st_size
    det = load_backend(q, threads=1)
    md = det.metadata
    assert md["precision"] == "int8" and md["int8"]["calib_images"] == 4 and md["int8"]["method"] == "max"
    assert set(md["int8"]["float_convs"]) == set(head)
    rep = check_runtime_parity(rh.tiny_model(), det, rh.images(), tol=None)
    assert rep.rel_box > 0 and rep.rel_box < 0.2  # int8 moves the outputs, a little
    assert rh.hidden_leftovers(tmp_path) == []


def test_int8_that_loses_accuracy_is_not_kept(work, data, tmp_path, capsys):
    rh.export_cli(work / "tiny.pt", tmp_path, "ncnn", "--int8", "--calib-data", str(data),
                  "--calib-images", "2", "--int8-map-tol", "-1")  # fmt: skip
    assert not (tmp_path / "tiny_int8_ncnn_model").exists()
    assert (tmp_path / "tiny_ncnn_model" / "model.ncnn.param").is_file()
    out = capsys.readouterr().out
    assert "ncnn int8 (max): mAP50-95" in out and "ncnn int8 (kl): mAP50-95" in out  # every variant tried
    assert "ncnn int8: not kept" in out


def test_int8_weights_round_as_ncnn_does():
    import numpy as np

    from reports.ncnn_int8 import to_int8, weight_scales

    w = np.array([-1.0, 0.5, 1 / 254, 0.0, 2.0, -2.0, 1.0, 0.0], np.float32)
    s = weight_scales(w, 2)
    assert s.tolist() == pytest.approx([127.0, 63.5])
    assert to_int8(w, s).tolist() == [-127, 64, 1, 0, 127, -127, 64, 0]  # half away from zero
    assert weight_scales(np.zeros(4, np.float32), 1).tolist() == [1.0]


def test_kl_threshold_clips_a_far_outlier():
    import numpy as np

    from reports.ncnn_int8 import HIST_BINS, kl_threshold_bin

    hist = np.zeros(HIST_BINS, np.int64)
    hist[:300] = np.linspace(1000, 1, 300).astype(np.int64)
    hist[-1] = 1  # one value far out
    t = kl_threshold_bin(hist)
    assert 128 <= t < 600


def test_kl_calibration_runs_on_the_model(exported):
    import numpy as np

    from reports.ncnn_backend import load_net
    from reports.ncnn_int8 import calibrate_blobs, quantisable_layers, read_param

    chosen, _ = quantisable_layers(read_param(exported)[1])
    blobs = sorted({ly.bottoms[0] for ly in chosen})[:3]
    xs = [np.random.default_rng(i).random((3, rh.IMGSZ, rh.IMGSZ), dtype=np.float32) for i in range(2)]
    net = load_net(exported, 1, int8=False)
    kl, mx = calibrate_blobs(net, blobs, lambda: xs, "kl"), calibrate_blobs(net, blobs, lambda: xs, "max")
    assert set(kl) == set(blobs) and all(kl[b] >= mx[b] > 0 for b in blobs)  # KL clips: a threshold <= max


def test_bin_walk_refuses_what_it_cannot_read(exported, tmp_path):
    from reports.ncnn_int8 import read_param, split_bin

    header, layers = read_param(exported)
    data = exported.with_suffix(".bin").read_bytes()
    assert len(split_bin(layers, data, "m.bin")) >= 10
    with pytest.raises(ExportError, match="4 bytes of the .bin are not accounted for"):
        split_bin(layers, data + b"\0" * 4, "m.bin")
    with pytest.raises(ExportError, match="ends inside the weights"):
        split_bin(layers, data[: len(data) // 2], "m.bin")
    layers[3].type = "BatchNorm"
    with pytest.raises(ExportError, match=f"layer {layers[3].name} \\(BatchNorm\\) keeps weights"):
        split_bin(layers, data, "m.bin")
    bad = tmp_path / "bad.param"
    bad.write_text("7767517\n1 1\nInput\n")
    with pytest.raises(ExportError, match="bad.param:3: expected"):
        read_param(bad)
