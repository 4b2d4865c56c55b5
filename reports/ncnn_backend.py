"""ncnn for ARM boards: .param/.bin from the exported ONNX through pnnx, a predictor and a latency runner.

Layout, as the official (Ultralytics) ncnn export writes it: `<stem>_ncnn_model/model.ncnn.param`,
`model.ncnn.bin` and `metadata.yaml` (stride, names as an {index: name} dict, imgsz: ncnn's .param does not
record the input size, so the loader takes it from there). The folder appears atomically.

Weights are stored in fp32 (pnnx's default is fp16) and the predictor turns off ncnn's fp16/bf16 storage and
arithmetic, so the parity check compares fp32 with fp32. On an ARM board ncnn would run fp16 arithmetic by
default; the latency measured here, on this x86 CPU, is only a proxy for that.

int8 (`export_ncnn_int8`): ncnn's own int8 format, written in Python by `reports.ncnn_int8` (ncnn's C++ tools
`ncnn2table` and `ncnn2int8` are in neither wheel), into `<stem>_int8_ncnn_model/`. This module imports `ncnn` at
the top: import it only after `reports.backends.require_extra`.
"""

from __future__ import annotations

import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import ncnn
import numpy as np
import yaml

from reports.export import ExportError
from reports.imaging import prepare
from reports.ncnn_int8 import head_convolutions, quantise_ncnn, read_param
from reports.ncnn_onnx import rewrite_strided_slices, unconverted_layers
from reports.runtime_common import FixedInputPredictor, find_model_file
from reports.runtime_files import publish_dir, runtime_metadata, staging_dir
from yolo.convention import from_meta as convention_from_meta
from yolo.device import usable_cores

PARAM, BIN, META = "model.ncnn.param", "model.ncnn.bin", "metadata.yaml"


def _run_pnnx(onnx_copy: Path, shape: list[int]) -> None:
    """The pnnx converter on the ONNX copy inside the staging folder (every side file it writes stays there).

    The binary is run directly rather than through `pnnx.convert`, which discards its exit code and output.
    """
    import pnnx  # optional, and only the export needs it

    d = onnx_copy.parent
    outputs = {"pnnxparam": "model.pnnx.param", "pnnxbin": "model.pnnx.bin", "pnnxpy": "model_pnnx.py",
               "pnnxonnx": "model.pnnx.onnx", "ncnnparam": PARAM, "ncnnbin": BIN, "ncnnpy": "model_ncnn.py"}
    cmd = [pnnx.EXEC_PATH, str(onnx_copy), f"inputshape=[{','.join(map(str, shape))}]f32", "fp16=0",
           *(f"{k}={d / v}" for k, v in outputs.items())]
    proc = subprocess.run(cmd, cwd=d, capture_output=True, text=True)
    if proc.returncode != 0 or not (d / PARAM).is_file() or not (d / BIN).is_file():
        lines = (proc.stderr or proc.stdout or "").strip().splitlines()
        reason = lines[-1] if lines else f"exit code {proc.returncode}"
        raise ExportError(f"pnnx could not convert {onnx_copy.name} to ncnn: {reason}")


def export_ncnn(onnx_path: str | Path, out_dir: str | Path | None = None,
                extra_metadata: dict[str, Any] | None = None) -> Path:
    """Convert an exported (static-shape) ONNX file to ncnn fp32 through pnnx; returns the .param path.

    The folder `<stem>_ncnn_model` is built in a hidden temp folder beside it and renamed into place.
    """
    onnx_path = Path(onnx_path)
    folder = Path(out_dir or onnx_path.parent) / f"{onnx_path.stem}_ncnn_model"
    md = runtime_metadata(onnx_path, "ncnn", "fp32", "pnnx", extra_metadata)
    imgsz = md.get("imgsz")
    if not isinstance(imgsz, list) or len(imgsz) != 2:
        raise ExportError(f"{onnx_path}: no fixed imgsz in its metadata (export the ONNX with a fixed size)")
    with staging_dir(folder) as tmp:
        work = tmp / "work"
        work.mkdir()
        rewrite_strided_slices(onnx_path, work / "model.onnx")  # ShuffleNetV2's even/odd split, see ncnn_onnx
        _run_pnnx(work / "model.onnx", [1, 3, int(imgsz[0]), int(imgsz[1])])
        left = unconverted_layers(work / PARAM)
        if left:
            ops = ", ".join(f"{k} x{v}" for k, v in sorted(left.items()))
            raise ExportError(f"pnnx could not convert {onnx_path.name} to ncnn: no ncnn layer for {ops}")
        out = tmp / "out"
        out.mkdir()
        for name in (PARAM, BIN):
            (work / name).replace(out / name)
        (out / META).write_text(yaml.safe_dump(md, sort_keys=False))
        publish_dir(out, folder)
    return folder / PARAM


def export_ncnn_int8(fp32_param: str | Path, calib_images: Sequence[Any], method: str = "max",
                     keep_float: Sequence[str] | None = None, threads: int | None = None) -> Path:
    """ncnn int8 of an fp32 ncnn export, beside it as `<stem>_int8_ncnn_model`; returns the .param path.

    Calibrated on `calib_images`, prepared exactly as at inference (the model's input convention, size and
    stride from its metadata.yaml). `keep_float` None keeps the Detect output convolutions float (their values
    become boxes and scores directly; quantised, they cost the map's 0.5x-pruned yolov5n about twice the
    mAP50-95). Per-input-blob scales by `method` ("max", or "kl" as ncnn2table; "max" held accuracy better on that
    model).
    """
    fp32_param = Path(fp32_param)
    if not calib_images:
        raise ExportError("ncnn int8 needs calibration images (--calib-data with a train split)")
    md = read_ncnn_metadata(fp32_param)
    shape, stride = tuple(int(v) for v in md["imgsz"]), int(md.get("stride", 32))
    convention = convention_from_meta(md)
    stem = fp32_param.parent.name.removesuffix("_ncnn_model")
    folder = fp32_param.parent.with_name(f"{stem}_int8_ncnn_model")
    if keep_float is None:
        keep_float = head_convolutions(read_param(fp32_param)[1])

    def inputs():
        for img in calib_images:
            yield prepare(img, shape, stride=stride, convention=convention)[0][0]

    net = load_net(fp32_param, threads, int8=False)
    with staging_dir(folder) as tmp:
        plan = quantise_ncnn(fp32_param, net, tmp / PARAM, tmp / BIN, inputs, len(calib_images), keep_float, method)
        md.update(precision="int8", source=fp32_param.parent.name,
                  int8={"tool": "yolov5-slim (ncnn int8 format)", "method": plan.method,
                        "calib_images": plan.calib_images, "quantised_convs": len(plan.quantised),
                        "float_convs": plan.kept_float})  # fmt: skip
        (tmp / META).write_text(yaml.safe_dump(md, sort_keys=False))
        publish_dir(tmp, folder)
    return folder / PARAM


def read_ncnn_metadata(param: Path) -> dict[str, Any]:
    """metadata.yaml (or <stem>.yaml) next to the .param; {} when there is none."""
    for side in (param.parent / META, param.parent / f"{param.name.split('.')[0]}.yaml"):
        if side.is_file():
            md = yaml.safe_load(side.read_text()) or {}
            if not isinstance(md, dict):
                raise ValueError(f"{side}: expected a mapping of metadata")
            return md
    return {}


def load_net(param: Path, threads: int | None, int8: bool = True) -> Any:
    """An ncnn.Net with `fp32_options`, loaded from `param` and its .bin; int8=False runs int8 layers in fp32."""
    net = ncnn.Net()
    fp32_options(net, threads)
    net.opt.use_int8_inference = int8
    if net.load_param(str(param)) != 0 or net.load_model(str(param.with_suffix(".bin"))) != 0:
        raise ValueError(f"{param}: ncnn could not load this model")
    return net


def fp32_options(net: Any, threads: int | None) -> None:
    """fp32 storage and arithmetic (parity with PyTorch), CPU only, `threads` threads (None = all cores)."""
    opt = net.opt
    opt.num_threads = int(threads or usable_cores())
    opt.use_vulkan_compute = False
    for flag in ("use_fp16_packed", "use_fp16_storage", "use_fp16_arithmetic", "use_bf16_storage"):
        if hasattr(opt, flag):
            setattr(opt, flag, False)


class NcnnDetector(FixedInputPredictor):
    """Runs an ncnn model (batch 1, the input size from metadata.yaml) through ncnn's Python binding."""

    kind = "ncnn"

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = find_model_file(path, ".param", "ncnn")
        self.threads = threads
        bin_path = self.path.with_suffix(".bin")
        if not bin_path.is_file():
            raise FileNotFoundError(f"ncnn weights {bin_path} not found (expected next to {self.path.name})")
        md = read_ncnn_metadata(self.path)
        imgsz = md.get("imgsz")
        if not isinstance(imgsz, list) or len(imgsz) != 2:
            raise ValueError(f"{self.path}: metadata.yaml with imgsz [h, w] is needed (ncnn's .param has no size)")
        self.batch_fixed, self.input_shape = 1, (int(imgsz[0]), int(imgsz[1]))
        self.net = load_net(self.path, threads)
        self.input_name, self.output_name = self.net.input_names()[0], self.net.output_names()[0]
        self.nc = None
        self._set_metadata(md)
        self.nc = len(self.names) or None

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """One image (1, 3, h, w) -> (1, anchors, 5 + nc); ncnn has no batch axis."""
        with self.net.create_extractor() as ex:
            ex.input(self.input_name, ncnn.Mat(np.ascontiguousarray(x[0])))
            ret, out = ex.extract(self.output_name)
            if ret != 0:
                raise RuntimeError(f"{self.path.name}: ncnn extract failed with code {ret}")
            return np.array(out, copy=True)[None]
