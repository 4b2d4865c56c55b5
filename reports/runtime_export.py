"""`export --format openvino|ncnn`: convert the verified ONNX file, check the result against PyTorch, and for
int8 (OpenVINO through nncf, ncnn through reports.ncnn_int8) check that the decode stayed float and (with data)
that mAP50-95 holds.

The parity check compares raw decoded outputs (every anchor's cx, cy, w, h, objectness and class scores) of the
runtime with the PyTorch module on the same letterboxed images. Its figure is a relative error per group: the
largest absolute difference divided by the largest reference magnitude of that group (box coordinates in input
pixels; probabilities). fp32 formats must stay within REL_TOL; int8 differences are reported, not bounded
(an int8 model is judged by its mAP, as the ONNX Runtime int8 path judges it).
"""

from __future__ import annotations

import copy
import shutil
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from reports.backends import MissingExtraError, load_backend, require_extra
from reports.export import ExportError
from reports.imaging import ImageLike, prepare
from yolo.convention import of as convention_of
from yolo.val import evaluate

REL_TOL = 1e-3


def check_format_request(fmt: str, int8: bool = False, dynamic: str = "none") -> None:
    """Raise before anything is written: a missing extra (one line naming it) or a combination not offered."""
    if fmt == "onnx":
        return
    if dynamic not in ("none", None, False):
        raise ValueError(f"--format {fmt} takes a fixed input size: export without --dynamic")
    if fmt == "openvino":
        require_extra("openvino", "--format openvino", ("openvino", "nncf") if int8 else ("openvino",))
    elif fmt == "ncnn":
        require_extra("ncnn", "--format ncnn")
    else:
        raise ValueError(f"--format {fmt}: expected one of onnx, openvino, ncnn")


# ------------------------------------------------------------------------------------------- parity


@dataclass
class RuntimeParity:
    """A runtime's decoded outputs vs PyTorch on the same letterboxed images."""

    runtime: str
    images: int
    shape: list[int]
    max_box_diff_px: float
    max_score_diff: float
    rel_box: float  # max |d box| / max |box| of the reference
    rel_score: float  # max |d score| / max |score| of the reference
    tolerance: float | None  # None: reported only (int8)
    failures: list[str] = field(default_factory=list)

    @property
    def passed(self) -> bool:
        return not self.failures

    def summary(self) -> str:
        bound = f"<= {self.tolerance:g}" if self.tolerance is not None else "reported, not bounded"
        status = "OK" if self.passed else "FAILED: " + "; ".join(self.failures)
        return (
            f"{self.runtime} vs PyTorch, raw decoded outputs of every anchor on {self.images} image(s) at "
            f"{self.shape[0]}x{self.shape[1]}: relative error boxes {self.rel_box:.1e}, scores {self.rel_score:.1e} "
            f"(max |d| {self.max_box_diff_px:.2e} px / {self.max_score_diff:.2e}; {bound}) {status}"
        )

    def to_dict(self) -> dict:
        return {**asdict(self), "passed": self.passed}


def check_runtime_parity(
    model: nn.Module, det: Any, images: Sequence[ImageLike], tol: float | None = REL_TOL, raise_on_fail: bool = True
) -> RuntimeParity:
    """Compare predictor `det` (fixed input) with the PyTorch module on `images`; ExportError beyond `tol`."""
    if not images:
        raise ValueError("a parity check needs at least one image")
    ref = copy.deepcopy(model).float().cpu().eval()
    if getattr(ref, "detect", None) is not None:
        ref.detect.export = True
    box = score = box_ref = score_ref = 0.0
    for img in images:
        x = torch.from_numpy(prepare(img, det.input_shape, stride=det.stride, convention=convention_of(det))[0])
        with torch.no_grad():
            pt = ref(x)
        pt = pt[0] if isinstance(pt, (tuple, list)) else pt
        y = det(x)
        if y.shape != pt.shape:
            raise ExportError(f"{det.kind} output shape {tuple(y.shape)} differs from PyTorch {tuple(pt.shape)}")
        d = (y - pt).abs()
        box, score = max(box, float(d[..., :4].max())), max(score, float(d[..., 4:].max()))
        box_ref = max(box_ref, float(pt[..., :4].abs().max()))
        score_ref = max(score_ref, float(pt[..., 4:].abs().max()))
    rep = RuntimeParity(det.kind, len(images), list(det.input_shape), box, score, box / max(box_ref, 1e-12),
                        score / max(score_ref, 1e-12), tol)  # fmt: skip
    if tol is not None:
        rep.failures += [f"{what} relative error {v:.2e} > {tol:g}"
                         for what, v in (("box", rep.rel_box), ("score", rep.rel_score)) if v > tol]  # fmt: skip
    if raise_on_fail and not rep.passed:
        raise ExportError(f"{det.kind} parity check failed for {det.path}: {'; '.join(rep.failures)}")
    return rep


def _verified(model: nn.Module, det: Any, images: Sequence[ImageLike], folder: Path) -> RuntimeParity:
    """fp32 parity; on failure the export folder is removed (a model that does not match is not handed out)."""
    try:
        return check_runtime_parity(model, det, images)
    except ExportError:
        shutil.rmtree(folder, ignore_errors=True)
        raise


# ------------------------------------------------------------------------------------------- export


@dataclass
class Int8Options:
    """What `export --int8` asks of an OpenVINO or ncnn int8 model (the ONNX path's flags, same meaning)."""

    data: Any = None  # DataConfig: train images calibrate, val images score
    calib_images: int = 32
    map_tolerance: float = 0.01
    score: bool = True
    imgsz: int = 640


def export_format(
    fmt: str,
    model: nn.Module,
    onnx_path: str | Path,
    parity_images: Sequence[ImageLike],
    int8: Int8Options | None = None,
    threads: int | None = None,
    log=print,
) -> dict[str, Any]:
    """Convert the verified `onnx_path` to `fmt` next to it and check it; returns {path, parity, int8}."""
    check_format_request(fmt, int8 is not None)
    onnx_path = Path(onnx_path)
    if fmt == "openvino":
        from reports.openvino_backend import OpenVinoDetector, export_openvino  # optional extra

        path = export_openvino(onnx_path)
        det = OpenVinoDetector(path, threads=threads)
    elif fmt == "ncnn":
        from reports.ncnn_backend import NcnnDetector, export_ncnn  # optional extra

        path = export_ncnn(onnx_path)
        det = NcnnDetector(path, threads=threads)
    else:
        raise MissingExtraError(f"--format {fmt}: nothing to convert (the .onnx is the {fmt} export)")
    rep = _verified(model, det, parity_images, path.parent)
    log(f"exported {path.parent} ({det.size_mb:.1f} MB)")
    log(rep.summary())
    out: dict[str, Any] = {"path": path, "parity": rep, "int8": None}
    if int8 is not None:
        out["int8"] = export_int8(fmt, model, onnx_path, path, parity_images, int8, threads, log)
    return out


# int8 variants tried in turn until one holds the accuracy tolerance (the first is the measured default):
# OpenVINO: nncf presets (symmetric activations, then asymmetric); ncnn: input-scale rule (max|x|, then KL)
INT8_VARIANTS = {"openvino": ("performance", "mixed"), "ncnn": ("max", "kl")}


def _int8_model(fmt: str, onnx_path: Path, fp32_path: Path, images: Sequence[Any], variant: str) -> Path:
    """The int8 model file of `variant` for OpenVINO (nncf) or ncnn."""
    if fmt == "openvino":
        from reports.openvino_backend import export_openvino  # optional extra

        return export_openvino(onnx_path, int8=True, calib_images=images, preset=variant)
    from reports.ncnn_backend import export_ncnn_int8  # optional extra

    return export_ncnn_int8(fp32_path, images, method=variant)


def export_int8(
    fmt: str, model: nn.Module, onnx_path: Path, fp32_path: Path, parity_images: Sequence[ImageLike],
    opts: Int8Options, threads: int | None = None, log=print,
) -> dict[str, Any]:
    """int8 next to the fp32 model of `fmt`, kept only when its mAP50-95 holds within the tolerance (when scored):
    the INT8_VARIANTS of `fmt` are tried in turn, and the first that holds is kept."""
    data = opts.data
    images = list(data.train)[: opts.calib_images] if data is not None else []
    name = {"openvino": "OpenVINO", "ncnn": "ncnn"}[fmt]
    if not images:
        raise ExportError(f"{name} int8 needs calibration images (--calib-data with a train split)")
    scored = bool(opts.score and data.val)
    kw = {"imgsz": opts.imgsz, "batch_size": 8, "progress": False}
    fp32_map, tried = None, []
    for variant in INT8_VARIANTS[fmt]:
        path = _int8_model(fmt, onnx_path, fp32_path, images, variant)
        det = load_backend(path, threads=threads)
        rep = check_runtime_parity(model, det, parity_images, tol=None)
        log(f"{name} int8 ({variant}): wrote {path.parent} ({det.size_mb:.1f} MB), decode and Detect output convs "
            f"kept float; {rep.summary()}")  # fmt: skip
        res: dict[str, Any] = {"path": path, "parity": rep, "calib_images": len(images), "kept": True,
                               "variant": variant, "accuracy": None}  # fmt: skip
        if not scored:
            log(f"{name} int8: accuracy not checked (no val split, or --int8-no-eval)")
            return res
        if fp32_map is None:
            fp32_map = evaluate(load_backend(fp32_path, threads=threads), data, **kw)["map"]  # once, for all variants
        q_map = evaluate(det, data, **kw)["map"]
        holds = q_map >= fp32_map - opts.map_tolerance
        tried.append({"variant": variant, "int8_map": q_map, "holds": holds})
        res["accuracy"] = {"fp32_map": fp32_map, "int8_map": q_map, "tolerance": opts.map_tolerance, "holds": holds,
                           "tried": tried}  # fmt: skip
        log(f"{name} int8 ({variant}): mAP50-95 {q_map:.4f} vs fp32 {fp32_map:.4f} (tolerance {opts.map_tolerance})")
        if holds:
            return res
        shutil.rmtree(path.parent, ignore_errors=True)
    res.update(kept=False, path=None)
    log(f"{name} int8: not kept (every variant lost more than {opts.map_tolerance} mAP50-95); the deliverable is "
        f"{fp32_path}")  # fmt: skip
    return res
