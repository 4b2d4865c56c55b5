"""Draw a model's detections on images: `.pt` (ours or official YOLOv5) or `.onnx`, a file or a folder.

detect(weights, source, out) -> list of written images (same names as the inputs, as .jpg/.png)
"""

from __future__ import annotations

import colorsys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

from reports.backends import backend_kind, load_backend
from reports.imaging import ImageLike, list_images, prepare, to_shape


class TorchPredictor:
    """A DetectionModel behind the predictor interface OnnxDetector has (fused, eval, CPU or CUDA)."""

    def __init__(self, model: torch.nn.Module, device: str = "cpu"):
        from reports.export import export_ready, max_stride

        self.device = torch.device(device)
        self.model = export_ready(model).to(self.device)
        self.names = [str(n) for n in getattr(model, "names", [])]
        self.stride = max_stride(model)
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
    from yolo.checkpoint import load_model

    model, _ = load_model(p)
    return TorchPredictor(model, device)


def predict(
    predictor: Any,
    img: ImageLike,
    imgsz: int | Sequence[int] = 640,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 300,
) -> tuple[np.ndarray, np.ndarray]:
    """(detections (n, 6) xyxy conf cls in original-image pixels, the RGB original)."""
    from yolo.boxes import scale_boxes
    from yolo.nms import non_max_suppression

    fixed = getattr(predictor, "input_shape", None)
    shape, auto = (fixed, False) if fixed else (to_shape(imgsz), True)
    x, hw0, ratio_pad, rgb = prepare(img, shape, auto=auto, stride=int(getattr(predictor, "stride", 32)))
    pred = predictor(torch.from_numpy(x))
    det = non_max_suppression(pred, conf_thres, iou_thres, max_det=max_det)[0]
    if len(det):
        det[:, :4] = scale_boxes(x.shape[2:], det[:, :4], hw0, ratio_pad)
    return det.numpy(), rgb


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


def detect(
    weights: str | Path | Any,
    source: str | Path | Sequence[str | Path],
    out: str | Path = "runs/detect",
    imgsz: int | Sequence[int] = 640,
    conf_thres: float = 0.25,
    iou_thres: float = 0.45,
    max_det: int = 300,
    threads: int | None = None,
    device: str = "cpu",
    log=print,
) -> list[Path]:
    """Draw detections of `weights` on every image of `source`; returns the written files in `out`."""
    from reports.export import check_out_dir

    files = list_images(source)
    out = check_out_dir(Path(out))
    predictor = load_predictor(weights, threads=threads, device=device)
    names = list(predictor.names)
    written = []
    for f in files:
        det, rgb = predict(predictor, f, imgsz, conf_thres, iou_thres, max_det)
        target = out / (f.stem + (".png" if f.suffix.lower() == ".png" else ".jpg"))
        draw_detections(rgb, det, names).save(target, quality=92)
        counts: dict[str, int] = {}
        for c in det[:, 5].astype(int).tolist():
            counts[names[c]] = counts.get(names[c], 0) + 1
        summary = ", ".join(f"{n} {k}" for k, n in counts.items()) or "no detections"
        log(f"{f.name}: {summary} -> {target}")
        written.append(target)
    return written


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
