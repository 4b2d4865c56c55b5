"""OpenVINO as a second engine: IR from the exported ONNX, optional nncf int8, a predictor and a latency runner.

Layout, as the official YOLOv5 export writes it: `<stem>_openvino_model/<stem>.xml`, `.bin` and `<stem>.yaml`
(stride, names as an {index: name} dict, imgsz, and our producer / precision / int8 facts). The same metadata is
also stored in the IR's rt_info (`model_info`), read when the yaml is missing. The folder appears atomically.

Weights are saved in fp32 (`compress_to_fp16=False`; OpenVINO's default halves them) and the CPU plugin is
pinned to fp32 arithmetic (`INFERENCE_PRECISION_HINT=f32`): on CPUs with AMX / AVX-512 BF16 it would otherwise
run in bf16, which moves boxes by far more than the parity tolerance. int8 comes from nncf post-training
quantisation calibrated on the same images as the ONNX Runtime int8 path, with the Detect decode (everything
between the last convolutions and the output) left out of quantisation, as the ONNX path leaves it float.

This module imports `openvino` at the top: import it only after `reports.backends.require_extra`.
"""

from __future__ import annotations

import functools
import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import openvino as ov
import yaml

from reports.export import ExportError
from reports.imaging import prepare
from reports.runtime_common import FixedInputPredictor, find_model_file
from reports.runtime_files import publish_dir, runtime_metadata, staging_dir
from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import InputConvention
from yolo.convention import from_meta as convention_from_meta

RT_INFO_KEY = ["model_info", "yolov5_slim"]
STOP_TYPES = ("Convolution", "GroupConvolution")  # the last convolutions of each Detect branch end the decode
LEAF_TYPES = ("Constant", "Parameter")


@functools.cache
def shared_core() -> ov.Core:
    """One OpenVINO Core for the process. A new Core per model (parity check, box count, timing, scoring each load
    one) crashed the process with a segmentation fault once an nncf int8 IR had been scored beside torch running
    more than one thread; with one Core the same pipeline run passes (docs/runtimes.md, Known limits)."""
    return ov.Core()


def cpu_config(threads: int | None) -> dict[str, str]:
    """CPU plugin settings: `threads` inference threads (None/0 = OpenVINO's choice), latency hint, fp32."""
    return {
        "INFERENCE_NUM_THREADS": str(int(threads or 0)),
        "PERFORMANCE_HINT": "LATENCY",
        "INFERENCE_PRECISION_HINT": "f32",
    }


def decode_ops(model: ov.Model) -> dict[str, str]:
    """{friendly name: op type} of the ops between the last convolutions and the outputs (the Detect decode).

    Walks backwards from every result and stops at a convolution, as reports.quantize.decode_nodes does on ONNX.
    """
    out: dict[str, str] = {}
    stack = [r.input_value(0).get_node() for r in model.get_results()]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        name, kind = node.get_friendly_name(), node.get_type_name()
        if name in seen or kind in STOP_TYPES or kind in LEAF_TYPES:
            continue
        seen.add(name)
        out[name] = kind
        stack.extend(i.get_source_output().get_node() for i in node.inputs())
    return out


def head_convolutions(model: ov.Model) -> list[str]:
    """The convolutions where the decode walk stops: the Detect output convs, whose values the decode turns
    straight into boxes and scores. Kept float: quantised, they doubled yolov5n's mAP50-95 loss at 640 in a probe on
    coco128."""
    out: list[str] = []
    stack = [r.input_value(0).get_node() for r in model.get_results()]
    seen: set[str] = set()
    while stack:
        node = stack.pop()
        name, kind = node.get_friendly_name(), node.get_type_name()
        if name in seen or kind in LEAF_TYPES:
            continue
        seen.add(name)
        if kind in STOP_TYPES:
            out.append(name)
            continue
        stack.extend(i.get_source_output().get_node() for i in node.inputs())
    return sorted(out)


def quantized_decode_ops(model: ov.Model) -> list[str]:
    """FakeQuantize ops inside the decode region: must be empty for an int8 model to keep the decode float."""
    return [f"{t} {n}" for n, t in decode_ops(model).items() if t in ("FakeQuantize", "FakeConvert")]


def _calibration_dataset(images: Sequence[Any], shape: tuple[int, int], stride: int, convention: InputConvention):
    import nncf  # optional: only the int8 export needs it

    def transform(img: Any) -> np.ndarray:
        return prepare(img, shape, stride=stride, convention=convention)[0]  # exactly as at inference

    return nncf.Dataset(list(images), transform)


PRESETS = ("performance", "mixed")  # nncf's: symmetric activations, or asymmetric (SiLU outputs go below zero)


def quantize_nncf(
    model: ov.Model, images: Sequence[Any], stride: int, convention: InputConvention = DEFAULT_CONVENTION,
    preset: str = "performance",
) -> ov.Model:
    """nncf post-training int8 of `model` calibrated on `images`, the decode ops and the Detect output convs kept
    float (ignored_scope); `preset` one of PRESETS."""
    import nncf  # optional: only the int8 export needs it

    if not images:
        raise ExportError("OpenVINO int8 needs calibration images (--calib-data with a train split)")
    if preset not in PRESETS:
        raise ValueError(f"nncf preset {preset!r}: expected one of {', '.join(PRESETS)}")
    shape = tuple(int(d) for d in model.input(0).get_shape()[2:])
    nncf.set_log_level(logging.WARNING)  # its INFO lines list every ignored node: noise to a user
    scope = nncf.IgnoredScope(names=[*decode_ops(model), *head_convolutions(model)])
    q = nncf.quantize(model, _calibration_dataset(images, shape, stride, convention), subset_size=len(images),
                      ignored_scope=scope, preset=getattr(nncf.QuantizationPreset, preset.upper()))  # fmt: skip
    bad = quantized_decode_ops(q)
    if bad:
        raise ExportError(f"nncf quantised the Detect decode ({', '.join(bad[:3])}); it must stay float")
    return q


def export_openvino(
    onnx_path: str | Path,
    out_dir: str | Path | None = None,
    int8: bool = False,
    calib_images: Sequence[Any] = (),
    extra_metadata: dict[str, Any] | None = None,
    preset: str = "performance",
) -> Path:
    """Convert an exported ONNX file to OpenVINO IR (fp32, or nncf int8); returns the .xml path.

    The folder `<stem>[_int8]_openvino_model` is built in a hidden temp folder beside it and renamed into place.
    """
    onnx_path = Path(onnx_path)
    stem = onnx_path.stem
    folder = Path(out_dir or onnx_path.parent) / f"{stem}{'_int8' if int8 else ''}_openvino_model"
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as e:  # the converter raises its own types; one line, never swallowed
        raise ExportError(f"OpenVINO could not convert {onnx_path}: {str(e).strip().splitlines()[0]}") from e
    md = runtime_metadata(onnx_path, "openvino", "int8" if int8 else "fp32", "openvino", extra_metadata)
    if int8:
        float_convs = head_convolutions(model)
        model = quantize_nncf(model, calib_images, int(md.get("stride", 32)), convention_from_meta(md), preset)
        md["int8"] = {"tool": "nncf", "preset": preset, "calib_images": len(calib_images),
                      "float_ops": len(decode_ops(model)), "float_convs": float_convs}  # fmt: skip
    model.set_rt_info(json.dumps(md), RT_INFO_KEY)
    with staging_dir(folder) as tmp:
        ov.save_model(model, str(tmp / f"{stem}.xml"), compress_to_fp16=False)
        (tmp / f"{stem}.yaml").write_text(yaml.safe_dump(md, sort_keys=False))
        publish_dir(tmp, folder)
    return folder / f"{stem}.xml"


def read_ir_metadata(xml: Path, model: ov.Model | None = None) -> dict[str, Any]:
    """The sidecar <stem>.yaml (or metadata.yaml) next to the .xml, else the IR's rt_info, else {}."""
    for side in (xml.with_suffix(".yaml"), xml.parent / "metadata.yaml"):
        if side.is_file():
            md = yaml.safe_load(side.read_text()) or {}
            if not isinstance(md, dict):
                raise ValueError(f"{side}: expected a mapping of metadata")
            return md
    if model is not None and model.has_rt_info(RT_INFO_KEY):
        md = json.loads(model.get_rt_info(RT_INFO_KEY).astype(str))
        if isinstance(md.get("names"), dict):  # JSON made the class indices strings
            md["names"] = {int(k): v for k, v in md["names"].items()}
        return md
    return {}


class OpenVinoDetector(FixedInputPredictor):
    """Runs an OpenVINO IR (ours or official YOLOv5's) on the CPU plugin, fp32 arithmetic, `threads` threads."""

    kind = "openvino"

    def __init__(self, path: str | Path, threads: int | None = None):
        self.path = find_model_file(path, ".xml", "OpenVINO")
        self.threads = threads
        core = shared_core()
        model = core.read_model(str(self.path))
        if model.input(0).get_partial_shape().is_dynamic:
            raise ValueError(f"{self.path}: dynamic input shapes are not supported here (export with a fixed size)")
        shape = [int(d) for d in model.input(0).get_shape()]
        if len(shape) != 4:
            raise ValueError(f"{self.path}: expected a 4-d image input, found shape {shape}")
        self.batch_fixed, self.input_shape = shape[0], (shape[2], shape[3])
        self.nc = int(model.output(0).get_partial_shape()[-1].get_length()) - 5
        self.compiled = core.compile_model(model, "CPU", cpu_config(threads))
        self.request = self.compiled.create_infer_request()
        self._set_metadata(read_ir_metadata(self.path, model))

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """One inference on a ready (batch, 3, h, w) float32 array; the output is copied out of the request."""
        self.request.infer({0: x})
        return np.array(self.request.get_output_tensor(0).data, copy=True)
