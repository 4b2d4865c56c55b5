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


@pytest.mark.parametrize("flag, match", [("--int8", "ncnn2table"), ("--dynamic", "fixed input size")])
def test_int8_and_dynamic_are_refused_before_writing(work, tmp_path, flag, match):
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
