"""Shared checks for the OpenVINO and ncnn exporters (tests/test_export_openvino.py, tests/test_export_ncnn.py).

Each test module exports one tiny checkpoint (randomised BatchNorm, so outputs depend on the input) through the
command line, then runs the same checks on its format: parity, the file set, metadata, val / detect / benchmark /
report accepting the file, atomic writes and the one-line missing-extra error.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from reports.backends import load_backend
from reports.cli import register
from tests.zoo import randomize_bn
from yolo.checkpoint import save_checkpoint
from yolo.model import build_model, load_model_yaml
from yolo.synthetic import SYNTH_NAMES, make_synthetic_dataset

IMGSZ = 64
EXPORTED = {"openvino": "tiny_openvino_model/tiny.xml", "ncnn": "tiny_ncnn_model/model.ncnn.param"}


# fixtures for a test module that sets FORMAT = "openvino" | "ncnn" and imports these three


@pytest.fixture(scope="module")
def work(request, tmp_path_factory) -> Path:
    """A folder holding tiny.pt and out/ (tiny.onnx and the module's FORMAT export, made through the CLI)."""
    fmt = request.module.FORMAT
    d = tmp_path_factory.mktemp(fmt)
    export_cli(make_checkpoint(d), d / "out", fmt)
    return d


@pytest.fixture(scope="module")
def exported(request, work) -> Path:
    return work / "out" / EXPORTED[request.module.FORMAT]


@pytest.fixture(scope="module")
def data(work) -> Path:
    return make_data(work)


def parse(argv: list[str]) -> argparse.Namespace:
    ap = argparse.ArgumentParser()
    register(ap.add_subparsers(dest="command", required=True))
    return ap.parse_args(argv)


def tiny_model() -> torch.nn.Module:
    cfg = load_model_yaml("yolov5n")
    cfg.update(width_multiple=0.125, nc=len(SYNTH_NAMES))
    torch.manual_seed(0)
    m = randomize_bn(build_model(cfg)).eval()  # fresh BN makes every anchor's output the same: a weak check
    m.names = list(SYNTH_NAMES)
    return m


def make_checkpoint(folder: Path) -> Path:
    return save_checkpoint(folder / "tiny.pt", tiny_model(), {"imgsz": IMGSZ})


def make_data(folder: Path) -> Path:
    return make_synthetic_dataset(folder / "synth", n_train=4, n_val=2, img_size=IMGSZ)


def export_cli(ckpt: Path, out: Path, fmt: str, *extra: str) -> None:
    args = parse(["export", "--weights", str(ckpt), "--imgsz", str(IMGSZ), "--format", fmt, "--out", str(out),
                  *extra])  # fmt: skip
    assert args.func(args) == 0


def images() -> list[np.ndarray]:
    """Two RGB images of other aspect ratios than the input: the letterbox pads them."""
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((48, 64, 3), (64, 40, 3))]


def check_parity(path: Path) -> None:
    from reports.runtime_export import check_runtime_parity

    rep = check_runtime_parity(tiny_model(), load_backend(path, threads=1), images())
    assert rep.passed and rep.rel_box <= 1e-3 and rep.rel_score <= 1e-3
    assert rep.tolerance == 1e-3 and rep.images == 2


def hidden_leftovers(folder: Path) -> list[str]:
    """Temp folders/files an interrupted or finished export must not leave behind."""
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


def check_files(work: Path, exported: Path, files: list[str]) -> None:
    """out/ holds the .onnx and the export folder, the folder exactly `files`, and no temp folder is left."""
    out = work / "out"
    assert sorted(p.name for p in out.iterdir()) == ["tiny.onnx", exported.parent.name]
    assert sorted(p.name for p in exported.parent.iterdir()) == files
    assert hidden_leftovers(out) == []


def check_metadata(path: Path) -> None:
    det = load_backend(path, threads=1)
    assert det.names == list(SYNTH_NAMES) and det.stride == 32
    assert det.input_shape == (IMGSZ, IMGSZ) and det.imgsz == (IMGSZ, IMGSZ)
    assert det.metadata["names"] == dict(enumerate(SYNTH_NAMES))  # the official {index: name} form
    assert det.metadata["producer"] == "yolov5-slim" and det.metadata["precision"] == "fp32"


def check_val(path: Path, data: Path) -> None:
    """`prune.py val` on the exported file: yolo/ runs no runtime itself, prune.py hands it reports.backends'
    loader (the `load_exported` default), so this goes through the real command line."""
    import subprocess

    root = Path(__file__).resolve().parents[1]
    argv = [sys.executable, str(root / "prune.py"), "val", "--weights", str(path), "--data", str(data),
            "--imgsz", str(IMGSZ), "--batch-size", "2", "--workers", "0", "--threads", "1"]
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out = " ".join(proc.stdout.split())  # rich wraps lines at the console width
    assert "on 1 runtime thread (--threads 1)" in out and "2 images" in out, proc.stdout


def check_detect(path: Path, data: Path, out: Path) -> None:
    args = parse(["detect", "--weights", str(path), "--source", str(data.parent / "images" / "val"),
                  "--out", str(out), "--imgsz", str(IMGSZ), "--conf-thres", "0.001", "--threads", "1"])  # fmt: skip
    assert args.func(args) == 0
    assert len(list(out.iterdir())) == 2


def check_benchmark(path: Path, onnx: Path, out: Path, runtime: str) -> None:
    """Two runs each (a smoke test of the wiring, not a timing): the runtime column names what ran each file."""
    args = parse(["benchmark", str(onnx), str(path), "--threads", "1", "--runs", "2", "--warmup", "0",
                  "--json", str(out)])  # fmt: skip
    assert args.func(args) == 0
    rows = json.loads(out.read_text())["results"]["1"]
    assert [r["runtime"].split()[0] for r in rows.values()] == ["onnxruntime", runtime]
    assert all(r["threads"] == 1 for r in rows.values())


def check_report(path: Path, onnx: Path, run_dir: Path, data: Path, runtime: str) -> None:
    from reports.measure import build_entries
    from reports.report import write_report

    entries = build_entries({"baseline": onnx, "int8": path}, run_dir, data=data, imgsz=IMGSZ, threads=(1,),
                            runs=1, warmup=0, log=lambda *a: None)  # fmt: skip
    assert entries[1].notes["from"] == runtime and entries[1].metrics["evaluator"]
    assert entries[1].latency["onnxruntime 1 thread"]["runtime"].startswith(runtime)
    md = write_report(run_dir, entries, print_summary=False)["md"].read_text()
    assert f"| {runtime} " in md


def check_commands_in_a_subprocess(path: Path, data: Path, tmp: Path, runtime: str) -> None:
    """val, detect, benchmark and report on `path`, run in a child process.

    After OpenVINO had run next to ONNX Runtime with DataLoader workers (the report's scoring), the next
    subprocess the pytest process started segfaulted it (openvino 2026.4.1, torch 2.13): a Core per loaded model,
    now one per process (docs/runtimes.md). The child still keeps a crash of an optional runtime out of the suite.
    """
    import os
    import subprocess

    code = (f"from pathlib import Path; from tests import runtime_helpers as rh; p, d, t = Path({str(path)!r}), "
            f"Path({str(data)!r}), Path({str(tmp)!r}); rh.check_val(p, d); rh.check_detect(p, d, t / 'det'); "
            f"rh.check_benchmark(p, p.parents[1] / 'tiny.onnx', t / 'lat.json', {runtime!r}); "
            f"rh.check_report(p, p.parents[1] / 'tiny.onnx', t / 'rep', d, {runtime!r})")  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1]), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]


def check_missing_extra(ckpt: Path, out: Path, fmt: str, module: str, monkeypatch, capsys) -> None:
    """With the package unimportable: one line naming the extra, exit 2, and nothing written."""
    from yolo.errors import run_cli  # what prune.py's main runs a command with

    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    out.mkdir()
    args = parse(["export", "--weights", str(ckpt), "--format", fmt, "--out", str(out)])
    code = run_cli(args.func, args)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert err == [f"error: --format {fmt} needs the {fmt} extra: pip install .[{fmt}]"]
    assert list(out.iterdir()) == []


def check_parity_can_fail(path: Path) -> None:
    """The parity check is not vacuous: the same file against a differently initialised model fails."""
    from reports.export import ExportError
    from reports.runtime_export import check_runtime_parity

    other = randomize_bn(tiny_model(), seed=1)
    with pytest.raises(ExportError, match="parity check failed"):
        image = np.random.default_rng(1).integers(0, 256, (IMGSZ, IMGSZ, 3), dtype=np.uint8)
        check_runtime_parity(other, load_backend(path, threads=1), [image])
