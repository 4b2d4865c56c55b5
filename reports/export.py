"""ONNX export of a DetectionModel, checked against PyTorch on real images.

`export_onnx` writes one self-describing file: input `images` (float32 NCHW, RGB, 0-1), output `output0`
(N, anchors, 5 + nc) decoded as the PyTorch model decodes in eval mode (cx, cy, w, h in input pixels,
objectness, class scores), BatchNorm folded, simplified with onnxslim, validated by `onnx.checker`, metadata
`names` / `stride` / `imgsz` / `prune` / `producer`. The file appears atomically or not at all.

`check_parity` runs the file in ONNX Runtime and the original module in PyTorch on letterboxed images and
compares decoded outputs and post-NMS detections against stated tolerances.
"""

from __future__ import annotations

import copy
import json
import os
import sys
import tempfile
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

import onnx
import onnxslim
import torch
from torch import nn

from reports.imaging import ImageLike, prepare
from reports.onnx_backend import OnnxDetector
from reports.parity_match import match_detections
from yolo.convention import of as convention_of
from yolo.fileio import check_writable
from yolo.imgsz import check_imgsz, max_stride, to_shape
from yolo.nms import candidates, non_max_suppression

PRODUCER = "yolov5-slim"
INPUT_NAME = "images"
OUTPUT_NAME = "output0"
DynamicSpec = Union[bool, str, None]

# fp32 parity tolerances (ONNX Runtime vs the unfused PyTorch module): BN folding and kernel differences move a
# box by well under a hundredth of a pixel and a probability by ~1e-6 on real models; these bounds are 5-100x that.
BOX_TOL_PX = 0.05
SCORE_TOL = 1e-4
# Some models are sensitive to fp32 rounding itself (a freshly cut and re-fitted one moved a box by 0.1 px between
# PyTorch fp32 and fp64): the bounds widen to this many times PyTorch's own fp32 error, measured against fp64.
FP32_NOISE_FACTOR = 8.0


class ExportError(ValueError):
    """An export that cannot be done or did not verify; the message is one line naming the cause."""


# ------------------------------------------------------------------------------------------- helpers


def check_out_dir(folder: Path) -> Path:
    """Create `folder` if needed and prove it writable with a probe file; one-line error otherwise."""
    folder = Path(folder)
    try:
        check_writable(folder, "output folder")
    except ValueError as e:
        reason = str(e)[str(e).rfind(" (") + 1:]  # check_writable's "(<why>)" at the end
        raise ExportError(f"output folder {folder} is not writable {reason}") from None
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def normalise_dynamic(dynamic: DynamicSpec) -> str:
    """'none' | 'batch' | 'hw' | 'all' from False/None/True/'batch'/'hw'/'all'."""
    if dynamic in (False, None, "none", "", "false"):
        return "none"
    if dynamic is True or dynamic == "true":
        return "all"
    if dynamic in ("batch", "hw", "all"):
        return str(dynamic)
    raise ExportError(f"--dynamic {dynamic!r}: expected one of none, batch, hw, all")


PRUNE_OPS = ("prune", "depth", "drop_scale")  # the history ops that changed the architecture


def prune_summary(history: Sequence[dict] | None) -> list[dict]:
    """The pruning entries of a checkpoint history (channel cuts, depth pruning, a dropped scale), reduced to
    scalars (tables become a layer count)."""
    out = []
    for h in history or []:
        if not isinstance(h, dict) or h.get("op") not in PRUNE_OPS:
            continue
        s: dict[str, Any] = {}
        for k, v in h.items():
            if isinstance(v, (str, int, float, bool)) or v is None:
                s[k] = v
            elif isinstance(v, (list, tuple)) and len(v) <= 8 and all(isinstance(x, (int, float, str)) for x in v):
                s[k] = list(v)
            elif isinstance(v, (dict, list, tuple)):
                s[f"{k}_entries"] = len(v)
        out.append(s)
    return out


def _meta_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, default=str)


def official_names(names: Sequence[Any]) -> str:
    """Class names as the official YOLOv5 export writes them: str() of an {index: name} dict."""
    return str({i: str(n) for i, n in enumerate(names)})


def build_metadata(model: nn.Module, hw: tuple[int, int], dynamic: str, extra: dict | None) -> dict[str, str]:
    extra = dict(extra or {})
    history = extra.pop("history", None)
    names = list(extra.pop("names", None) or getattr(model, "names", None) or [])
    md: dict[str, Any] = {
        "producer": PRODUCER,
        "names": names,
        "stride": max_stride(model),
        "imgsz": [hw[0], hw[1]],
        "dynamic": dynamic,
        "task": "detect",
    }
    summary = prune_summary(history)
    if summary:
        md["prune"] = summary
    source = extra.pop("source", None)
    if isinstance(source, dict) and source.get("sha256"):
        md["source_sha256"] = source["sha256"]  # not the path: it is local to the exporting machine
    for k, v in extra.items():
        if k in ("stride", "imgsz", "producer", "format", "state_dict", "arch", "train_state", "anchors"):
            continue
        if isinstance(v, (str, int, float, bool, list, dict)) or v is None:
            md[k] = v
    md["input"] = convention_of(model).as_dict()  # how images are fed: val, detect and calibration of the file read it
    out = {k: _meta_value(v) for k, v in md.items()}
    out.update(stride=str(md["stride"]), names=official_names(names))  # as official YOLOv5 loaders expect
    return out


def export_ready(model: nn.Module) -> nn.Module:
    """A float32 CPU eval copy with BatchNorm folded and Detect returning only the decoded tensor."""
    m = copy.deepcopy(model).float().cpu().eval()
    if hasattr(m, "fuse") and not getattr(m, "is_fused", False):
        m.fuse()
    head = getattr(m, "detect", None)
    if head is not None:
        head.export = True
    for p in m.parameters():
        p.requires_grad_(False)
    return m


def _unlink(*paths: Path | None) -> None:
    for p in paths:
        if p is not None:
            Path(p).unlink(missing_ok=True)


def _slim(model_proto: onnx.ModelProto) -> onnx.ModelProto:

    slimmed = onnxslim.slim(model_proto)
    if not isinstance(slimmed, onnx.ModelProto):
        raise RuntimeError(f"onnxslim returned {type(slimmed).__name__}")
    ins, outs = [i.name for i in slimmed.graph.input], [o.name for o in slimmed.graph.output]
    if ins != [INPUT_NAME] or outs != [OUTPUT_NAME]:
        raise RuntimeError(f"slimming renamed the graph's inputs/outputs to {ins} / {outs}")
    return slimmed


# ------------------------------------------------------------------------------------------- export


def export_onnx(
    model: nn.Module,
    path: str | Path,
    imgsz: int | Sequence[int] = 640,
    opset: int = 17,
    dynamic: DynamicSpec = False,
    simplify: bool = True,
    metadata: dict | None = None,
    batch: int = 1,
) -> Path:
    """Export `model` to `path` (.onnx); returns the path. Raises ExportError with a one-line cause."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        path = path.with_suffix(".onnx")
    hw = check_imgsz(imgsz, max_stride(model), error=ExportError)
    mode = normalise_dynamic(dynamic)
    check_out_dir(path.parent)
    fd, raw_tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".raw.onnx", dir=path.parent)
    os.close(fd)
    fd, final_tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".onnx.tmp", dir=path.parent)
    os.close(fd)
    try:
        _trace(export_ready(model), torch.zeros(batch, 3, *hw), raw_tmp, opset, _dynamic_axes(mode))
        proto = _finished_graph(onnx.load(raw_tmp), simplify, build_metadata(model, hw, mode, metadata))
        onnx.save(proto, final_tmp)
        os.chmod(final_tmp, 0o644)
        os.replace(final_tmp, path)
    except OSError as e:
        raise ExportError(f"could not write {path}: {e.strerror or e}") from e
    finally:
        _unlink(Path(raw_tmp), Path(final_tmp))
    return path


def _dynamic_axes(mode: str) -> dict[str, dict[int, str]] | None:
    """torch.onnx.export's dynamic_axes for a normalised --dynamic mode (None for a static graph)."""
    if mode == "none":
        return None
    in_axes = {0: "batch"} if mode in ("batch", "all") else {}
    out_axes = dict(in_axes)
    if mode in ("hw", "all"):
        in_axes.update({2: "height", 3: "width"})
        out_axes[1] = "anchors"
    return {INPUT_NAME: in_axes, OUTPUT_NAME: out_axes}


def _first_line(e: Exception) -> str:
    return str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__


def _trace(m: nn.Module, x: torch.Tensor, raw_path: str, opset: int, axes: dict | None) -> None:
    """torch.onnx.export to `raw_path`. Its TracerWarnings (Detect's shape-dependent grid, expected for a fixed
    export and checked by the parity run) are silenced for this call only."""
    try:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore", torch.jit.TracerWarning)
            torch.onnx.export(
                m,
                (x,),
                raw_path,
                dynamo=False,
                opset_version=opset,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes=axes,
                do_constant_folding=True,
            )
    except Exception as e:  # the exporter raises many types; re-raise as one, never swallow
        raise ExportError(f"torch.onnx.export failed at opset {opset}: {_first_line(e)}") from e


def _finished_graph(proto: onnx.ModelProto, simplify: bool, metadata: dict[str, str]) -> onnx.ModelProto:
    """The traced graph slimmed (when asked and possible), with our metadata, validated by onnx.checker."""
    if simplify:
        try:
            proto = _slim(proto)
        except Exception as e:  # slimming is an optimisation: fall back, loudly
            print(f"WARNING: onnxslim failed ({_first_line(e)}); writing the unsimplified graph", file=sys.stderr)
    del proto.metadata_props[:]
    for k, v in metadata.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = k, v
    proto.producer_name = PRODUCER
    try:
        onnx.checker.check_model(proto, full_check=True)
    except onnx.checker.ValidationError as e:
        raise ExportError(f"exported graph failed onnx.checker: {str(e).splitlines()[0]}") from e
    return proto


# ------------------------------------------------------------------------------------------- parity


# anchors compared by value when nothing survives NMS: the most confident ones of each image
TOPK_ANCHORS = 100


@dataclass
class ParityReport:
    """ONNX Runtime vs PyTorch on the same letterboxed images."""

    images: int
    shapes: list[list[int]]
    max_box_diff_px: float  # decoded cx, cy, w, h of every anchor
    max_score_diff: float  # objectness and class probabilities of every anchor
    nms_matched: int
    nms_unmatched: int  # detections without a partner that are not borderline (|score - conf_thres| > tol)
    nms_borderline: int  # unmatched but within score_tol of conf_thres: tolerated
    max_nms_box_diff_px: float
    max_nms_score_diff: float
    box_tol_px: float  # the bounds applied: the given ones, or FP32_NOISE_FACTOR x the fp32 noise when larger
    score_tol: float
    conf_thres: float
    fp32_box_noise_px: float = 0.0  # PyTorch fp32 vs fp64 on the same inputs: the model's own rounding error
    fp32_score_noise: float = 0.0
    topk: int = 0  # anchors per image ranked by objectness x best class probability (PyTorch's), compared below
    max_topk_box_diff_px: float = 0.0
    max_topk_score_diff: float = 0.0
    failures: list[str] = field(default_factory=list)
    nms_ties: int = 0  # unmatched, but the other backend holds the same box before NMS: NMS kept a near-equal one

    @property
    def passed(self) -> bool:
        return not self.failures

    @property
    def nms_checked(self) -> bool:
        """Whether any detection survived NMS in either backend (otherwise only raw outputs were compared)."""
        return bool(self.nms_matched or self.nms_unmatched or self.nms_borderline or self.nms_ties)

    def summary(self) -> str:
        status = "OK" if self.passed else "FAILED: " + "; ".join(self.failures)
        nms = (
            f"after NMS {self.nms_matched} matched, max |d box| {self.max_nms_box_diff_px:.2e} px, "
            f"|d score| {self.max_nms_score_diff:.2e}"
            + (f", {self.nms_ties} NMS tie(s) (kept in one backend, suppressed by a near-equal box in the other)"
               if self.nms_ties else "")
            if self.nms_checked
            else f"not checked after NMS: no detections at conf {self.conf_thres:g}"
        )
        return (
            f"parity on {self.images} image(s): max |d box| {self.max_box_diff_px:.2e} px, "
            f"max |d score| {self.max_score_diff:.2e}; top {self.topk} anchors by score: max |d box| "
            f"{self.max_topk_box_diff_px:.2e} px, |d score| {self.max_topk_score_diff:.2e}; {nms} "
            f"(tolerances {self.box_tol_px:.3g} px / {self.score_tol:.3g}; PyTorch's own fp32 error "
            f"{self.fp32_box_noise_px:.1e} px / {self.fp32_score_noise:.1e}) {status}"
        )

    def to_dict(self) -> dict:
        d = asdict(self)
        d["passed"] = self.passed
        d["nms_checked"] = self.nms_checked
        return d


def _first(out: Any) -> torch.Tensor:
    return out[0] if isinstance(out, (tuple, list)) else out


def check_parity(
    model: nn.Module,
    onnx_path: str | Path,
    images: Sequence[ImageLike],
    imgsz: int | Sequence[int] | None = None,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    box_tol: float = BOX_TOL_PX,
    score_tol: float = SCORE_TOL,
    threads: int | None = None,
    raise_on_fail: bool = True,
) -> ParityReport:
    """Compare ONNX Runtime with the PyTorch module on letterboxed `images` (paths or RGB arrays).

    A static ONNX is fed its own input size; a dynamic-h/w one gets each image letterboxed to the smallest
    stride multiple (so several shapes are exercised) around `imgsz` (default: the export size in metadata).
    Compared: every anchor's decoded outputs, the TOPK_ANCHORS most confident anchors of each image (what
    detections are made of, also when none passes conf_thres, as on synthetic images or with a weak model), and
    the detections after NMS; the report says when there were none to compare.
    The tolerances widen to FP32_NOISE_FACTOR x the difference between PyTorch fp32 and fp64 on the same inputs
    when that is larger: ONNX Runtime is held to the model's own rounding error, not to an absolute bound a
    numerically sensitive model cannot meet in any fp32 runtime. Raises ExportError when a difference is beyond
    the tolerances (unless raise_on_fail=False).
    """

    if not images:
        raise ValueError("check_parity needs at least one image")
    det = OnnxDetector(onnx_path, threads=threads)
    raw = _raw_outputs(model, det, images, imgsz)
    rep = ParityReport(
        images=len(images), shapes=raw["shapes"], max_box_diff_px=raw["box"], max_score_diff=raw["score"],
        nms_matched=0, nms_unmatched=0, nms_borderline=0, max_nms_box_diff_px=0.0, max_nms_score_diff=0.0,
        box_tol_px=max(box_tol, FP32_NOISE_FACTOR * raw["box_noise"]),
        score_tol=max(score_tol, FP32_NOISE_FACTOR * raw["score_noise"]), conf_thres=conf_thres,
        fp32_box_noise_px=raw["box_noise"], fp32_score_noise=raw["score_noise"],
    )  # fmt: skip
    _compare_top_anchors(rep, raw["outputs"])
    _compare_detections(rep, raw["outputs"], iou_thres)
    _judge(rep)
    if raise_on_fail and not rep.passed:
        raise ExportError(f"ONNX parity check failed for {onnx_path}: {'; '.join(rep.failures)}")
    return rep


def _raw_outputs(model: nn.Module, det: Any, images: Sequence[ImageLike], imgsz) -> dict[str, Any]:
    """Both backends' decoded outputs per image, their largest differences, and PyTorch's fp32-vs-fp64 noise."""
    ref = copy.deepcopy(model).float().cpu().eval()
    if getattr(ref, "detect", None) is not None:
        ref.detect.export = True
    ref64 = copy.deepcopy(ref).double()
    if det.input_shape is not None:
        shape, auto = det.input_shape, False
    else:
        shape, auto = to_shape(imgsz if imgsz is not None else det.imgsz), True
    res: dict[str, Any] = {"box": 0.0, "score": 0.0, "box_noise": 0.0, "score_noise": 0.0, "outputs": [], "shapes": []}
    for img in images:
        x, _, _, _ = prepare(img, shape, auto=auto, stride=det.stride, convention=convention_of(det))
        res["shapes"].append(list(x.shape[2:]))
        xt = torch.from_numpy(x)
        with torch.no_grad():
            pt, p64 = _first(ref(xt)), _first(ref64(xt.double()))
        ox = det(xt)
        if ox.shape != pt.shape:
            raise ExportError(f"ONNX output shape {tuple(ox.shape)} differs from PyTorch {tuple(pt.shape)}")
        d, noise = (ox - pt).abs(), (pt.double() - p64).abs()
        res["box"] = max(res["box"], float(d[..., :4].max()))
        res["score"] = max(res["score"], float(d[..., 4:].max()))
        res["box_noise"] = max(res["box_noise"], float(noise[..., :4].max()))
        res["score_noise"] = max(res["score_noise"], float(noise[..., 4:].max()))
        res["outputs"].append((pt, ox))
    return res


def _compare_top_anchors(rep: ParityReport, outputs: Sequence[tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Boxes and scores of each image's TOPK_ANCHORS anchors by objectness x best class probability."""
    for pt, ox in outputs:
        conf = pt[..., 4:5] * pt[..., 5:] if pt.shape[-1] > 5 else pt[..., 4:5]
        k = min(TOPK_ANCHORS, pt.shape[1])
        idx = conf.amax(-1).topk(k, dim=1).indices  # (batch, k)
        pick = idx[..., None].expand(-1, -1, pt.shape[-1])
        d = (torch.gather(ox, 1, pick) - torch.gather(pt, 1, pick)).abs()
        rep.topk = k
        rep.max_topk_box_diff_px = max(rep.max_topk_box_diff_px, float(d[..., :4].max()))
        rep.max_topk_score_diff = max(rep.max_topk_score_diff, float(d[..., 4:].max()))


def _compare_detections(rep: ParityReport, outputs: Sequence[tuple[torch.Tensor, torch.Tensor]], iou: float) -> None:
    """Detections after NMS in both backends, paired by class and IoU."""

    nms_box, nms_score = [], []
    for pt, ox in outputs:
        a = non_max_suppression(pt, rep.conf_thres, iou)[0].numpy()
        b = non_max_suppression(ox, rep.conf_thres, iou)[0].numpy()
        pool_a, pool_b = (candidates(x[0], rep.conf_thres).numpy() for x in (pt, ox))
        bd, sd, un, bl, ties = match_detections(a, b, rep.conf_thres, rep.score_tol, rep.box_tol_px, pool_a,
                                                  pool_b)
        nms_box += bd
        nms_score += sd
        rep.nms_unmatched += un
        rep.nms_borderline += bl
        rep.nms_ties += ties
    rep.nms_matched = len(nms_box)
    rep.max_nms_box_diff_px = max(nms_box, default=0.0)
    rep.max_nms_score_diff = max(nms_score, default=0.0)


def _judge(rep: ParityReport) -> None:
    if rep.max_box_diff_px > rep.box_tol_px:
        rep.failures.append(f"box diff {rep.max_box_diff_px:.3g} px > {rep.box_tol_px:.3g}")
    if rep.max_score_diff > rep.score_tol:
        rep.failures.append(f"score diff {rep.max_score_diff:.3g} > {rep.score_tol:.3g}")
    if rep.nms_unmatched:
        rep.failures.append(f"{rep.nms_unmatched} detection(s) present in only one backend")
