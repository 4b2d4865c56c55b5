"""Static int8 quantisation of an exported detector with ONNX Runtime (QDQ, per-channel weights).

The Detect decode (Reshape/Transpose/Sigmoid/Mul/Add/Pow/Concat after the last convolution of each output
branch) stays in float: quantising it zeroes the confidences (onnxruntime issues 14233, 10787). Those nodes
are found by walking the graph backwards from the output until a Conv is reached, and are passed to
`quantize_static(nodes_to_exclude=...)`; the tensors the last convolutions write stay float too.

Calibration images are letterboxed exactly as at inference (to the model's fixed input size).

Which variant is fastest depends on the CPU and the ORT build. REFERENCE.md measured (ORT 1.31) signed
activations (QInt8, ORT's default) 2x slower than fp32 and unsigned ones (QUInt8) 1.6x faster; here
(ORT 1.32, AVX-512 VNNI + AMX Xeon, bench/results/int8.json) QInt8 ran 2.4x slower and QUInt8 only ~0.86x the
fp32 time. So `select_int8` builds the requested variants, times them interleaved with fp32 on the user's
machine, scores them when data is given, and keeps the fastest one within the accuracy tolerance, or none.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from reports.export import check_out_dir
from reports.imaging import prepare
from reports.latency import OnnxRunner, benchmark
from reports.onnx_backend import OnnxDetector, read_metadata
from reports.onnx_graph import decode_nodes, float_decode_check, keep_head_outputs_float, name_nodes
from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import InputConvention
from yolo.convention import from_meta as convention_from_meta
from yolo.data import load_data_yaml
from yolo.fileio import atomic_write_text
from yolo.imgsz import to_shape
from yolo.val import evaluate

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


# --------------------------------------------------------------------------------------- selection


@dataclass
class Int8Result:
    config: dict
    path: str
    size_mb: float
    latency_ms: float | None = None
    ratio_to_fp32: float | None = None  # int8 time / fp32 time (lower is faster)
    map50: float | None = None
    map: float | None = None
    holds_accuracy: bool | None = None
    error: str | None = None


@dataclass
class Int8Selection:
    fp32: dict
    variants: list[Int8Result] = field(default_factory=list)
    chosen: str | None = None  # path of the kept int8 model, None when fp32 stays the deliverable
    reason: str = ""
    metrics: dict[str, dict] = field(default_factory=dict)  # path -> full evaluate() result (not serialised)

    def to_dict(self) -> dict:
        return {
            "fp32": self.fp32,
            "variants": [asdict(v) for v in self.variants],
            "chosen": self.chosen,
            "reason": self.reason,
        }


def select_int8(
    fp32_path: str | Path,
    out_dir: str | Path,
    calib_images: Sequence[Any],
    configs: Sequence[Int8Config],
    data_cfg: Any = None,
    map_tolerance: float = 0.01,
    threads: int = 1,
    rounds: int = 30,
    warmup: int = 3,
    eval_kwargs: dict | None = None,
    log=print,
) -> Int8Selection:
    """Build each int8 variant, time it interleaved with fp32 (`threads`), score it when `data_cfg` is given.

    Kept: the fastest variant faster than fp32 whose mAP50-95 is within `map_tolerance` of fp32's (accuracy
    is not checked without data). None kept when no variant qualifies: fp32 stays the deliverable.
    """
    fp32_path, out_dir = Path(fp32_path), Path(out_dir)
    results = _build_variants(fp32_path, out_dir, calib_images, configs, log)
    ok = [r for r in results if r.error is None]
    sel = Int8Selection(fp32={"path": str(fp32_path), "size_mb": os.path.getsize(fp32_path) / 1e6}, variants=results)
    if not ok:
        sel.reason = "no int8 variant could be built"
        return sel
    _time_variants(sel, ok, threads, rounds, warmup, log)
    if data_cfg is not None:
        _score_variants(sel, ok, data_cfg, map_tolerance, eval_kwargs, log)
    _choose(sel, ok, map_tolerance)
    return sel


def _build_variants(fp32_path: Path, out_dir: Path, calib_images, configs, log) -> list[Int8Result]:
    """One quantised file per config (a failed one is kept as a result carrying its error)."""
    results: list[Int8Result] = []
    for cfg in configs:
        path = out_dir / f"{fp32_path.stem}-int8-{cfg.tag}.onnx"
        t0 = time.perf_counter()
        try:
            quantize_int8(fp32_path, path, calib_images, cfg)
        except QuantizeError as e:
            results.append(Int8Result(asdict(cfg), str(path), 0.0, error=str(e)))
            continue
        log(f"int8 {cfg.tag}: quantised in {time.perf_counter() - t0:.1f} s -> {path}")
        results.append(Int8Result(asdict(cfg), str(path), os.path.getsize(path) / 1e6))
    return results


def _time_variants(sel: Int8Selection, ok: list[Int8Result], threads: int, rounds: int, warmup: int, log) -> None:
    """Median latency of fp32 and every variant, timed interleaved; each variant's ratio to fp32."""

    runners = {"fp32": OnnxRunner(sel.fp32["path"], threads)}
    runners.update({Path(r.path).stem: OnnxRunner(r.path, threads) for r in ok})
    lat = benchmark(runners, runs=rounds, warmup=warmup)
    base = lat["fp32"]["median_ms"]
    sel.fp32["latency_ms"] = base
    for r in ok:
        r.latency_ms = lat[Path(r.path).stem]["median_ms"]
        r.ratio_to_fp32 = r.latency_ms / base
        log(f"int8 {Path(r.path).stem}: {r.latency_ms:.1f} ms vs fp32 {base:.1f} ms ({r.ratio_to_fp32:.2f}x the time)")


def _score_variants(sel: Int8Selection, ok: list[Int8Result], data_cfg, map_tolerance: float, eval_kwargs, log):
    """mAP of fp32 and every variant on data_cfg's val split; whether each holds accuracy within the tolerance."""

    kw = {"batch_size": 8, "progress": False, **(eval_kwargs or {})}
    m = evaluate(OnnxDetector(sel.fp32["path"]), data_cfg, **kw)
    sel.metrics[sel.fp32["path"]] = m
    sel.fp32.update(map50=m["map50"], map=m["map"])
    log(f"fp32: mAP50 {m['map50']:.4f} mAP50-95 {m['map']:.4f}")
    for r in ok:
        m = evaluate(OnnxDetector(r.path), data_cfg, **kw)
        sel.metrics[r.path] = m
        r.map50, r.map = m["map50"], m["map"]
        r.holds_accuracy = r.map >= sel.fp32["map"] - map_tolerance
        log(f"int8 {Path(r.path).stem}: mAP50 {r.map50:.4f} mAP50-95 {r.map:.4f}")


def _choose(sel: Int8Selection, ok: list[Int8Result], map_tolerance: float) -> None:
    """sel.chosen: the fastest variant faster than fp32 that holds accuracy (or none), and the reason."""
    candidates = [r for r in ok if r.ratio_to_fp32 < 1.0 and r.holds_accuracy is not False]
    if candidates:
        best = min(candidates, key=lambda r: r.latency_ms)
        sel.chosen = best.path
        acc = "accuracy not checked (no data)" if best.holds_accuracy is None else f"mAP50-95 {best.map:.4f}"
        sel.reason = f"fastest variant within tolerance: {best.ratio_to_fp32:.2f}x the fp32 time, {acc}"
        return
    slow = all(r.ratio_to_fp32 >= 1.0 for r in ok)
    sel.reason = (
        "no int8 variant is faster than fp32 on this CPU"
        if slow
        else f"no faster int8 variant keeps mAP50-95 within {map_tolerance} of fp32"
    ) + "; fp32 stays the deliverable"


def quantize_best(
    fp32_path: str | Path,
    data: Any,
    out_path: str | Path,
    imgsz: int = 640,
    variants: Sequence[str] = AUTO_VARIANTS,
    method: str = "percentile",
    calib_images: int = 32,
    map_tolerance: float = 0.01,
    score: bool = True,
    rounds: int = 30,
    keep_best_measured: bool = True,
    log=print,
) -> dict[str, Any]:
    """Quantise `fp32_path` as each variant (tags, Int8Config.from_tag), keep the fastest that holds accuracy at
    `out_path`.

    `data` (data.yaml path or DataConfig): its train images calibrate, its val images score (unless
    `score=False`). Returns {"path", "chosen", "reason", "metrics", "latency", "notes"}: `chosen` says whether
    the int8 model qualified; when none did, fp32 stays the deliverable and, with `keep_best_measured`, the
    fastest variant is still written to `out_path` (for the report) - otherwise "path" is None.
    `latency` uses the report's setting name ('onnxruntime 1 thread'); selection details are in notes.
    A JSON summary is written next to `out_path` (same stem, .json).
    """

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    cfg_data = data if hasattr(data, "train") else load_data_yaml(data)
    images = list(cfg_data.train)[:calib_images]
    if not images:
        raise QuantizeError(f"{getattr(cfg_data, 'yaml_path', data)}: the train split has no images to calibrate on")
    configs = [Int8Config.from_tag(v, method, calib_images) for v in variants]
    scoring = cfg_data if (score and cfg_data.val) else None
    sel = select_int8(
        fp32_path, out_path.parent, images, configs, data_cfg=scoring, map_tolerance=map_tolerance,
        rounds=rounds, eval_kwargs={"imgsz": imgsz}, log=log,
    )  # fmt: skip
    result = _keep_one(sel, fp32_path, out_path, keep_best_measured)
    summary = {k: v for k, v in result.items() if k != "metrics"}
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(summary, indent=2, default=str) + "\n")
    log(f"int8: {sel.reason}")
    return result


def _keep_one(sel: Int8Selection, fp32_path: Path, out_path: Path, keep_best_measured: bool) -> dict[str, Any]:
    """Move the chosen variant (or, with keep_best_measured, the fastest one) to out_path, delete the others,
    and describe the outcome (quantize_best's result)."""

    ok = [v for v in sel.variants if v.error is None]
    keep = sel.chosen or (min(ok, key=lambda v: v.latency_ms).path if ok and keep_best_measured else None)
    kept = next((v for v in ok if v.path == keep), None)
    for v in sel.variants:
        if v.path != keep:
            Path(v.path).unlink(missing_ok=True)
    result: dict[str, Any] = {
        "path": None, "chosen": sel.chosen is not None, "reason": sel.reason, "metrics": {}, "latency": {},
        "notes": {"selection": sel.to_dict(), "deliverable": str(fp32_path)},
    }  # fmt: skip
    if not keep or kept is None:
        return result
    shutil.move(keep, out_path)
    result["path"] = str(out_path)
    result["metrics"] = sel.metrics.get(keep, {})
    result["latency"] = {
        "onnxruntime 1 thread": {"median_ms": kept.latency_ms, "fp32_median_ms": sel.fp32.get("latency_ms")}
    }
    result["notes"]["int8"] = kept.config
    if sel.chosen:
        result["notes"]["deliverable"] = str(out_path)
    else:
        result["notes"]["not_kept"] = "measured for the report only: " + sel.reason
    return result
