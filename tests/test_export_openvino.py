"""`export --format openvino` on a tiny model: parity, files, metadata, int8 (nncf), and the commands that load
the .xml. Skipped when the openvino extra is not installed (pip install .[openvino])."""

from __future__ import annotations

import pytest

pytest.importorskip("openvino")

from reports.backends import load_backend  # noqa: E402
from reports.export import ExportError  # noqa: E402
from reports.runtime_export import check_runtime_parity  # noqa: E402
from tests import runtime_helpers as rh  # noqa: E402
from tests.runtime_helpers import data as data  # noqa: E402, F401  (fixture)
from tests.runtime_helpers import exported as exported  # noqa: E402, F401  (fixture)
from tests.runtime_helpers import work as work  # noqa: E402, F401  (fixture)

FORMAT = "openvino"


def test_files_written_and_nothing_else(work, exported):
    rh.check_files(work, exported, ["tiny.bin", "tiny.xml", "tiny.yaml"])


def test_metadata_read_back(exported):
    rh.check_metadata(exported)
    rh.check_metadata(exported.parent)  # the export folder itself is accepted
    assert load_backend(exported).metadata["converter"]["openvino"]


def test_metadata_from_rt_info_without_the_yaml(exported, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(exported.parent, copy)
    (copy / "tiny.yaml").unlink()
    rh.check_metadata(copy / "tiny.xml")


def test_parity_with_torch(exported):
    rh.check_parity(exported)
    rh.check_parity_can_fail(exported)


def test_val_detect_benchmark_report_accept_the_xml(exported, data, tmp_path):
    rh.check_commands_in_a_subprocess(exported, data, tmp_path, "openvino")


def test_missing_extra_is_one_line(work, tmp_path, monkeypatch, capsys):
    rh.check_missing_extra(work / "tiny.pt", tmp_path / "out", "openvino", "openvino", monkeypatch, capsys)


def test_failed_write_keeps_the_previous_folder(work, exported, monkeypatch):
    import openvino as ov

    before = {p.name: p.read_bytes() for p in exported.parent.iterdir()}

    def broken(*a, **k):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(ov, "save_model", broken)
    with pytest.raises(OSError):
        rh.export_cli(work / "tiny.pt", work / "out", "openvino")
    assert {p.name: p.read_bytes() for p in exported.parent.iterdir()} == before
    assert rh.hidden_leftovers(work / "out") == []


def test_int8_keeps_the_decode_float(work, data, tmp_path):
    pytest.importorskip("nncf")
    import openvino as ov

    from reports.openvino_backend import quantized_decode_ops

    rh.export_cli(work / "tiny.pt", tmp_path, "openvino", "--int8", "--calib-data", str(data),
                  "--calib-images", "4", "--int8-map-tol", "1.0")  # fmt: skip
    q = tmp_path / "tiny_int8_openvino_model" / "tiny.xml"
    model = ov.Core().read_model(str(q))
    assert sum(op.get_type_name() == "FakeQuantize" for op in model.get_ops()) > 0
    assert quantized_decode_ops(model) == []
    det = load_backend(q, threads=1)
    assert det.metadata["precision"] == "int8" and det.metadata["int8"]["calib_images"] == 4
    assert det.metadata["int8"]["preset"] == "performance" and len(det.metadata["int8"]["float_convs"]) >= 3
    heads = [op for op in model.get_ops() if op.get_friendly_name() in det.metadata["int8"]["float_convs"]]
    assert len(heads) == len(det.metadata["int8"]["float_convs"])
    feeds = [i.get_source_output().get_node().get_type_name() for op in heads for i in op.inputs()]
    assert "FakeQuantize" not in feeds  # neither their input nor their weights are quantised
    rep = check_runtime_parity(rh.tiny_model(), det, rh.images(), tol=None)
    assert rep.passed and rep.rel_box > 0  # reported, not bounded; int8 does move the outputs


def test_int8_tries_the_mixed_preset_before_giving_up(work, data, tmp_path, capsys):
    pytest.importorskip("nncf")
    rh.export_cli(work / "tiny.pt", tmp_path, "openvino", "--int8", "--calib-data", str(data),
                  "--calib-images", "2", "--int8-map-tol", "-1")  # fmt: skip
    out = capsys.readouterr().out
    assert "OpenVINO int8 (performance): mAP50-95" in out and "OpenVINO int8 (mixed): mAP50-95" in out
    assert "OpenVINO int8: not kept" in out and not (tmp_path / "tiny_int8_openvino_model").exists()


def test_int8_without_calibration_data_is_refused_before_writing(work, tmp_path):
    args = rh.parse(["export", "--weights", str(work / "tiny.pt"), "--format", "openvino", "--int8",
                     "--out", str(tmp_path)])  # fmt: skip
    with pytest.raises(ValueError, match="--int8 needs --calib-data"):
        args.func(args)
    assert list(tmp_path.iterdir()) == []


def test_parity_failure_removes_the_export(work, tmp_path, monkeypatch):
    import reports.runtime_export as rx

    def mismatch(model, det, images, tol=1e-3, raise_on_fail=True):
        raise ExportError("openvino parity check failed (forced)")

    monkeypatch.setattr(rx, "check_runtime_parity", mismatch)
    with pytest.raises(ExportError, match="parity check failed"):
        rh.export_cli(work / "tiny.pt", tmp_path, "openvino")
    assert not (tmp_path / "tiny_openvino_model").exists()
