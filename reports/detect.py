"""Draw a model's detections on images: `.pt` (ours or official YOLOv5), `.onnx`, OpenVINO `.xml` or ncnn `.param`, a
file or a folder.

detect(weights, source, out, DetectOptions(...)) -> DetectRun (the run folder, the images written - same names
as the inputs, as .jpg/.png - and the unreadable files). Pre- and post-processing are the official detect.py's.
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from reports.backends import backend_kind, load_backend
from reports.export import ExportError, export_ready
from reports.imaging import ImageLike, list_images, prepare, read_rgb
from yolo.boxes import scale_boxes
from yolo.checkpoint import load_model
from yolo.convention import of as convention_of
from yolo.fileio import atomic_write_text, increment_run_dir
from yolo.imgsz import check_imgsz, max_stride, to_shape
from yolo.nms import non_max_suppression


class TorchPredictor:
    """A DetectionModel behind the predictor interface OnnxDetector has (fused, eval, CPU or CUDA)."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):

        self.device = torch.device(device)
        self.model = export_ready(model).to(self.device)
        self.names = [str(n) for n in getattr(model, "names", [])]
        self.stride = max_stride(model)
        self.input_convention = convention_of(model)
        self.input_shape = None
        self.batch_fixed = None

    def __call__(self, imgs: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            out = self.model(imgs.to(self.device).float())
        out = out[0] if isinstance(out, (tuple, list)) else out
        return out.float().cpu()


def load_predictor(weights: str | Path | Any, threads: int | None = None, device: str = "cpu"):
    """The runtime's predictor for an exported file (reports.backends.load_backend), a TorchPredictor for a
    checkpoint path or an nn.Module."""
    if isinstance(weights, torch.nn.Module):
        return TorchPredictor(weights, device)
    if not isinstance(weights, (str, Path)):
        return weights  # already a predictor
    p = Path(weights)
    if backend_kind(p):  # .onnx, OpenVINO .xml, ncnn .param (or their export folders)
        return load_backend(p, threads=threads)

    model, _ = load_model(p)
    return TorchPredictor(model, device)


def predict(
    predictor: Any,
    img: ImageLike,
    imgsz: int | Sequence[int] = 640,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 1000,
) -> tuple[np.ndarray, np.ndarray]:
    """(detections (n, 6) xyxy conf cls in original-image pixels, the RGB original), as the official detect.py.

    Same preprocessing (OpenCV's bilinear resize, minimum-rectangle letterbox for a dynamic model, the fixed
    input of a static ONNX) and the same post-processing: boxes mapped back from the letterbox shapes and
    rounded to whole pixels. A model of the stretch convention (yolo.convention) gets the image stretched to the
    square size and in its channel order, as its authors fed it.
    """

    fixed = getattr(predictor, "input_shape", None)
    shape, auto = (fixed, False) if fixed else (to_shape(imgsz), True)
    stride = int(getattr(predictor, "stride", 32))
    convention = convention_of(predictor)
    x, hw0, ratio_pad, rgb = prepare(img, shape, auto=auto, stride=stride, opencv=True, convention=convention)
    pred = predictor(torch.from_numpy(x))
    det = non_max_suppression(pred, conf_thres, iou_thres, max_det=max_det)[0]
    if len(det):  # a letterbox is recomputed from the shapes, as the official detect.py does
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], hw0, ratio_pad if convention.stretch else None).round()
    return det.numpy(), rgb


def yolo_label_lines(det: np.ndarray, hw0: Sequence[int], with_conf: bool = False) -> list[str]:
    """One 'class cx cy w h [conf]' line per detection, normalised to the image size, as the official --save-txt."""
    h, w = hw0[0], hw0[1]
    lines = []
    for x1, y1, x2, y2, conf, cls in det.tolist():
        vals = [int(cls), (x1 + x2) / 2 / w, (y1 + y2) / 2 / h, (x2 - x1) / w, (y2 - y1) / h]
        vals += [conf] if with_conf else []
        lines.append(" ".join(f"{v:g}" for v in vals))
    return lines


def class_colour(i: int) -> tuple[int, int, int]:
    h = (i * 0.618033988749895) % 1.0
    r, g, b = colorsys.hsv_to_rgb(h, 0.85, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


def _font(size: int):
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: fixed-size bitmap font
        return ImageFont.load_default()


def draw_detections(rgb: np.ndarray, det: np.ndarray, names: Sequence[str], title: str | None = None) -> Image.Image:
    """The image with one coloured box and a 'name 0.87' label per detection (and an optional title)."""
    im = Image.fromarray(rgb).convert("RGB")
    d = ImageDraw.Draw(im)
    lw = max(2, round(sum(im.size) / 600))
    font = _font(max(12, lw * 6))
    for x1, y1, x2, y2, conf, cls in det.tolist():
        c = int(cls)
        col = class_colour(c)
        d.rectangle((x1, y1, x2, y2), outline=col, width=lw)
        label = f"{names[c] if c < len(names) else c} {conf:.2f}"
        tb = d.textbbox((0, 0), label, font=font)
        tw, th = tb[2] - tb[0], tb[3] - tb[1]
        ty = y1 - th - 2 * lw if y1 - th - 2 * lw >= 0 else y1
        d.rectangle((x1, ty, x1 + tw + 2 * lw, ty + th + 2 * lw), fill=col)
        d.text((x1 + lw, ty + lw - tb[1]), label, fill=(255, 255, 255), font=font)
    if title:
        tb = d.textbbox((0, 0), title, font=font)
        d.rectangle((0, 0, tb[2] + 8, tb[3] + 8), fill=(0, 0, 0))
        d.text((4, 4), title, fill=(255, 255, 255), font=font)
    return im


@dataclass
class DetectOptions:
    """How `detect` runs and what it writes (the official detect.py's defaults)."""

    imgsz: int | Sequence[int] = 640
    conf_thres: float = 0.25
    iou_thres: float = 0.45
    max_det: int = 1000
    save_txt: bool = False  # labels/<stem>.txt, YOLO format (class cx cy w h, normalised), for images with boxes
    save_conf: bool = False  # append the confidence to each label line
    exist_ok: bool = False  # write into an existing `out` instead of the next free name (exp2, exp3, ...)


@dataclass
class DetectRun:
    """What `detect` did: the run folder, the images written, and the files it could not read."""

    out: Path
    written: list[Path] = field(default_factory=list)
    unreadable: list[str] = field(default_factory=list)  # 'file: reason'

    def summary(self) -> str:
        n = len(self.written) + len(self.unreadable)
        where = f" -> {self.out}" if self.written else " (nothing written)"
        return f"{plural(n, 'image')}, {len(self.unreadable)} unreadable{where}"


def plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _checked_imgsz(predictor: Any, imgsz: int | Sequence[int]) -> int | Sequence[int]:
    """--imgsz against the model's stride before any image is read (a static ONNX has its own input size)."""

    if getattr(predictor, "input_shape", None):
        return imgsz
    return check_imgsz(imgsz, int(getattr(predictor, "stride", 32)), error=ExportError)


def _save_one(run: DetectRun, f: Path, det: np.ndarray, rgb: np.ndarray, names: Sequence[str], opt) -> Path:
    """The drawn image (and its label file): the run folder is made here, at the first write."""
    run.out.mkdir(parents=True, exist_ok=True)
    target = run.out / (f.stem + (".png" if f.suffix.lower() == ".png" else ".jpg"))
    draw_detections(rgb, det, names).save(target, quality=92)
    if opt.save_txt and len(det):

        lines = yolo_label_lines(det, rgb.shape[:2], opt.save_conf)
        atomic_write_text(run.out / "labels" / f"{f.stem}.txt", "\n".join(lines) + "\n")
    return target


def _counts(det: np.ndarray, names: Sequence[str]) -> str:
    counts: dict[str, int] = {}
    for c in det[:, 5].astype(int).tolist():
        name = names[c] if c < len(names) else str(c)
        counts[name] = counts.get(name, 0) + 1
    return ", ".join(f"{n} {k}" for k, n in counts.items()) or "no detections"


def detect(
    weights: str | Path | Any,
    source: str | Path | Sequence[str | Path],
    out: str | Path = "runs/detect/exp",
    options: DetectOptions | None = None,
    threads: int | None = None,
    device: str = "cpu",
    log=print,
) -> DetectRun:
    """Draw detections of `weights` on every image of `source` into the run folder `out`.

    `out` is incremented (exp, exp2, ...) unless options.exist_ok; it is created at the first image written.
    An unreadable image is one line in the log and counted; the others are still processed.
    """

    opt = options or DetectOptions()
    files = list_images(source)
    predictor = load_predictor(weights, threads=threads, device=device)
    imgsz = _checked_imgsz(predictor, opt.imgsz)
    out = Path(out)
    run = DetectRun(increment_run_dir(out.parent, out.name, opt.exist_ok))
    names = list(predictor.names)
    for f in files:
        try:
            rgb = read_rgb(f)
        except (OSError, ValueError) as e:  # PIL's UnidentifiedImageError is an OSError
            reason = str(e).splitlines()[0] if str(e) else type(e).__name__
            run.unreadable.append(f"{f}: {reason}")
            log(f"{f}: unreadable image, skipped ({reason})")
            continue
        det, rgb = predict(predictor, rgb, imgsz, opt.conf_thres, opt.iou_thres, opt.max_det)
        target = _save_one(run, f, det, rgb, names, opt)
        log(f"{f.name}: {_counts(det, names)} -> {target}")
        run.written.append(target)
    return run


def side_by_side(
    predictors: Sequence[tuple[str, Any]],
    image: ImageLike,
    imgsz: int | Sequence[int] = 640,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    height: int = 480,
) -> Image.Image:
    """One image's detections by each (title, predictor), drawn next to each other at a common height."""
    panels = []
    for title, p in predictors:
        det, rgb = predict(p, image, imgsz, conf_thres, iou_thres)
        panel = draw_detections(rgb, det, list(p.names), title=f"{title}: {len(det)} boxes")
        w = max(1, round(panel.width * height / panel.height))
        panels.append(panel.resize((w, height), Image.BILINEAR))
    canvas = Image.new("RGB", (sum(p.width for p in panels) + 8 * (len(panels) - 1), height), (255, 255, 255))
    x = 0
    for p in panels:
        canvas.paste(p, (x, 0))
        x += p.width + 8
    return canvas
