"""Static int8 quantisation of an exported detector with ONNX Runtime (QDQ, per-channel weights).

The Detect decode (Reshape/Transpose/Sigmoid/Mul/Add/Pow/Concat after the last convolution of each output
branch) stays in float: quantising it zeroes the confidences (onnxruntime issues 14233, 10787). Those nodes
are found by walking the graph backwards from the output until a Conv is reached, and are passed to
`quantize_static(nodes_to_exclude=...)`; the tensors the last convolutions write stay float too.

Calibration images are letterboxed exactly as at inference (to the model's fixed input size).

Which variant is fastest, and which holds accuracy, depends on the CPU and the ORT build: REFERENCE.md measured
(ORT 1.31) signed activations (QInt8, ORT's default) 2x slower than fp32 and unsigned ones (QUInt8) 1.6x faster;
on an AVX-512 VNNI Xeon (ORT 1.32, bench/results/int8.json) QInt8 ran 2.4x slower and QUInt8 ~0.86x the fp32
time; on an AVX2 CPU without VNNI, QUInt8 activations with QInt8 weights lose 0.05 mAP50-95 to saturated 16-bit
sums (bench/results/int8_profile.md). So reports.int8_select builds the variants, times and scores them on the
user's machine, and keeps the fastest one within the accuracy tolerance, or none.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from reports.export import check_out_dir
from reports.imaging import prepare
from reports.onnx_backend import read_metadata
from reports.onnx_graph import decode_nodes, float_decode_check, keep_head_outputs_float, name_nodes
from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import InputConvention
from yolo.convention import from_meta as convention_from_meta
from yolo.imgsz import to_shape

ACTIVATIONS = {"u8": "QUInt8", "s8": "QInt8"}
METHODS = {"minmax": "MinMax", "entropy": "Entropy", "percentile": "Percentile"}
# Measured on yolov5n / coco128 val (bench/results/int8.json): fp32 0.340 mAP50-95; u8 MinMax 0.324; u8 Percentile
# (99.999th, 2048 bins) 0.335; Entropy gives MinMax's exact scales under quantize_static (its histogram has as
# many bins as the quantised range, so the full range always wins). Hence Percentile is the default.


# What `export --int8` tries by default, timed and scored on the user's machine (bench/results/int8_profile.md):
# u8 is the fast one where the CPU has VNNI; on AVX2 without VNNI its u8 x s8 products saturate 16-bit sums and
# yolov5n lost 0.053 mAP50-95, which reduce_range (7-bit weights, 'rr') mostly avoids; s8 runs as float
# convolutions between Q/DQ pairs on x86 (slower than fp32) but is the ARM kernel.
AUTO_VARIANTS = ("u8", "u8-rr", "s8")


class QuantizeError(ValueError):
    """Quantisation that cannot be done; one-line cause."""


# --------------------------------------------------------------------------------------- calibration


def _reader_base():

    return CalibrationDataReader


class ImageCalibrationReader(_reader_base()):
    """Feeds images one at a time to the calibrator, as at inference (the model's input convention)."""

    def __init__(
        self,
        images: Sequence[Any],
        input_name: str,
        shape: tuple[int, int],
        stride: int = 32,
        convention: InputConvention = DEFAULT_CONVENTION,
    ):
        self.images = list(images)
        self.convention = convention
        self.input_name = input_name
        self.shape = shape
        self.stride = stride
        self._it = iter(self.images)

    def get_next(self) -> dict[str, np.ndarray] | None:
        img = next(self._it, None)
        if img is None:
            return None
        x, _, _, _ = prepare(img, self.shape, auto=False, stride=self.stride, convention=self.convention)
        return {self.input_name: x}

    def rewind(self) -> None:
        self._it = iter(self.images)

    def set_range(self, start_index: int, end_index: int) -> None:
        """Feed only images[start:end] (ORT's strided calibration asks for one chunk at a time)."""
        self._it = iter(self.images[start_index:end_index])

    def __len__(self) -> int:
        return len(self.images)


CALIB_CHUNK = 4  # images per calibration pass: ORT keeps every intermediate activation of a pass in memory


def calibration_stride(n_images: int, chunk: int | None = None) -> int:
    """The largest divisor of n_images up to `chunk`: ORT's strided calibration needs equal chunks.

    Calibrating all 32 default images of yolov5n at 640 in one pass peaked at 8.1 GB resident; in chunks the
    histograms (or min/max) are merged pass by pass and only one chunk's activations are held at a time."""
    chunk = CALIB_CHUNK if chunk is None else chunk
    return max(d for d in range(1, min(chunk, n_images) + 1) if n_images % d == 0)


def _input_info(model: onnx.ModelProto) -> tuple[str, tuple[int | None, int | None]]:
    inp = model.graph.input[0]
    dims = [d.dim_value if d.HasField("dim_value") else None for d in inp.type.tensor_type.shape.dim]
    return inp.name, (dims[2], dims[3])


# --------------------------------------------------------------------------------------- quantisation

# Variant tag parts after 'u8-minmax-n32': the Int8Config field each sets, and to what.
_TAG_FLAGS = {
    "fhead": ("float_head_convs", True),
    "tensor": ("per_channel", False),
    "rr": ("reduce_range", True),
    "qop": ("operator_format", True),
    "qhead": ("quantize_head_outputs", True),
    "wu8": ("unsigned_weights", True),
}


@dataclass
class Int8Config:
    activations: str = "u8"  # u8 (QUInt8) | s8 (QInt8)
    method: str = "percentile"  # minmax | entropy | percentile (see the note at METHODS)
    images: int = 32
    per_channel: bool = True
    reduce_range: bool = False
    float_head_convs: bool = False  # also keep the Detect convolutions in float
    operator_format: bool = False  # QOperator (QLinearConv nodes written out) instead of QDQ pairs
    quantize_head_outputs: bool = False  # the Detect convolutions write int8 too (a Q/DQ pair before the decode)
    unsigned_weights: bool = False  # QUInt8 weights (u8u8 kernels) instead of QInt8: no int16 saturation on AVX2

    @property
    def tag(self) -> str:
        parts = [self.activations, self.method, f"n{self.images}"]
        flags = {"fhead": self.float_head_convs, "tensor": not self.per_channel, "rr": self.reduce_range,
                 "qop": self.operator_format, "qhead": self.quantize_head_outputs, "wu8": self.unsigned_weights}
        return "-".join(parts + [k for k, on in flags.items() if on])

    @classmethod
    def from_tag(cls, tag: str, method: str | None = None, images: int | None = None) -> Int8Config:
        """'u8-minmax-n32' / 's8-entropy-n64-fhead' / 'u8-rr' (the parts after the first may be omitted: then
        `method` and `images`, else the defaults, apply)."""
        parts = tag.strip().lower().split("-")
        cfg = cls(activations=parts[0])
        cfg.method, cfg.images = method or cfg.method, images or cfg.images
        for p in parts[1:]:
            if p in METHODS:
                cfg.method = p
            elif p.startswith("n") and p[1:].isdigit():
                cfg.images = int(p[1:])
            elif p in _TAG_FLAGS:
                setattr(cfg, _TAG_FLAGS[p][0], _TAG_FLAGS[p][1])
            else:
                raise QuantizeError(f"int8 variant {tag!r}: unknown part {p!r} (expected e.g. u8-minmax-n32, then any "
                                    f"of {', '.join(_TAG_FLAGS)})")
        return cfg.validate()

    def validate(self) -> Int8Config:
        if self.float_head_convs and self.quantize_head_outputs:
            raise QuantizeError("int8 variant: fhead (Detect convolutions in float) and qhead (their outputs in int8) "
                                "contradict each other")
        if self.activations not in ACTIVATIONS:
            raise QuantizeError(f"--int8-activations {self.activations!r}: expected one of auto, u8, s8")
        if self.method not in METHODS:
            raise QuantizeError(f"int8 calibration method {self.method!r}: expected one of {', '.join(METHODS)}")
        if self.images < 1:
            raise QuantizeError(f"--calib-images {self.images}: need at least 1 calibration image")
        return self


def check_variant_tags(tags: Sequence[str], flag: str) -> None:
    """Every tag parses, else one line naming the flag (before anything is written)."""
    for t in tags:
        try:
            Int8Config.from_tag(t)
        except QuantizeError as e:
            raise QuantizeError(f"{flag}: {e}") from None


def quantize_int8(
    fp32_path: str | Path,
    out_path: str | Path,
    calib_images: Sequence[Any],
    config: Int8Config | None = None,
    imgsz: int | Sequence[int] | None = None,
    preprocess: bool = True,
) -> Path:
    """Write a QDQ int8 copy of `fp32_path` calibrated on `calib_images` (paths or RGB arrays); returns its path.

    The first `config.images` images are used. Metadata of the fp32 file is carried over as written, plus `int8`.
    """

    cfg = (config or Int8Config()).validate()
    fp32_path, out_path = Path(fp32_path), Path(out_path)
    if not fp32_path.is_file():
        raise QuantizeError(f"ONNX model {fp32_path} not found")
    images = list(calib_images)[: cfg.images]
    if not images:
        raise QuantizeError("int8 calibration needs images (--calib-data with a train split)")
    check_out_dir(out_path.parent)
    meta = read_metadata(fp32_path)
    base = onnx.load(str(fp32_path))
    input_name, (h, w) = _input_info(base)
    if h is None or w is None:
        h, w = to_shape(imgsz if imgsz is not None else meta.get("imgsz", 640))
    reader = ImageCalibrationReader(images, input_name, (h, w), int(meta.get("stride", 32)), convention_from_meta(meta))
    tmpdir = Path(tempfile.mkdtemp(prefix=".int8-", dir=out_path.parent))
    try:
        src = _prepared_copy(base, fp32_path, tmpdir / "prep.onnx", preprocess)
        exclude, head_convs = decode_nodes(onnx.load(str(src)))
        if cfg.float_head_convs:
            exclude += head_convs
        method = _quantize_static(src, tmpdir / "int8.onnx", reader, cfg, exclude)
        q = onnx.load(str(tmpdir / "int8.onnx"))
        if not cfg.quantize_head_outputs:
            keep_head_outputs_float(q, head_convs)
        bad = float_decode_check(q)
        if bad:
            raise QuantizeError(f"quantised decode region is not float: {', '.join(bad[:3])}")
        props = {p.key: p.value for p in base.metadata_props}  # as written: official-style names and stride
        props["int8"] = json.dumps({**asdict(cfg), "method": method, "calib_images": len(images)})
        _save_with_metadata(q, props, tmpdir / "final.onnx", out_path)
    finally:
        for p in tmpdir.iterdir():
            p.unlink()
        tmpdir.rmdir()
    return out_path


def _prepared_copy(base: onnx.ModelProto, fp32_path: Path, dst: Path, preprocess: bool) -> Path:
    """The graph to quantise at `dst`: ORT's quant_pre_process output when asked (and it works), every node named."""
    if preprocess:

        try:
            quant_pre_process(str(fp32_path), str(dst), skip_symbolic_shape=False)
        except Exception as e:  # pre-processing is an optimisation: fall back to the plain file, loudly
            first = str(e).splitlines()[0] if str(e) else type(e).__name__
            print(f"WARNING: quant_pre_process failed ({first}); quantising as is", file=sys.stderr)
            onnx.save(base, str(dst))
    else:
        onnx.save(base, str(dst))
    onnx.save(name_nodes(onnx.load(str(dst))), str(dst))
    return dst


def _quantize_static(src: Path, dst: Path, reader, cfg: Int8Config, exclude: list[str]) -> str:
    """quantize_static with cfg's calibration method; returns the method actually used.

    ORT's histogram calibrators fail on (near-)constant tensors ("Too many bins for data range"); MinMax has no
    histogram: the run is retried with it, loudly, and the caller records what was used.
    """

    kwargs = dict(
        calibration_data_reader=reader,
        quant_format=QuantFormat.QOperator if cfg.operator_format else QuantFormat.QDQ,
        per_channel=cfg.per_channel,
        reduce_range=cfg.reduce_range,
        activation_type=getattr(QuantType, ACTIVATIONS[cfg.activations]),
        weight_type=QuantType.QUInt8 if cfg.unsigned_weights else QuantType.QInt8,
        nodes_to_exclude=exclude,
        extra_options={"CalibStridedMinMax": calibration_stride(len(reader))},  # any method, despite the name
    )
    try:
        quantize_static(str(src), str(dst), calibrate_method=getattr(CalibrationMethod, METHODS[cfg.method]), **kwargs)
        return cfg.method
    except ValueError as e:
        if cfg.method == "minmax":
            raise QuantizeError(f"int8 calibration failed: {str(e).splitlines()[0]}") from e
        print(f"WARNING: {cfg.method} calibration failed ({str(e).splitlines()[0]}); using minmax", file=sys.stderr)
    reader.rewind()
    quantize_static(str(src), str(dst), calibrate_method=CalibrationMethod.MinMax, **kwargs)
    return "minmax"


def _save_with_metadata(q: onnx.ModelProto, props: dict[str, str], tmp: Path, out_path: Path) -> None:
    """Replace q's metadata with `props`, check it, and move it into place atomically (0644)."""
    del q.metadata_props[:]
    for k, v in props.items():
        e = q.metadata_props.add()
        e.key, e.value = k, v
    onnx.checker.check_model(q)
    onnx.save(q, str(tmp))
    os.chmod(tmp, 0o644)
    os.replace(tmp, out_path)
