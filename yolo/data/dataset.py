"""The detection dataset: one scan that checks every image and label file, rect batches, and YOLOv5's
training samples (letterbox, mosaic, mixup, warps, HSV, flips).

Conventions (YOLOv5's, so its val/train logic ports unchanged):
- images are HxWx3 uint8 **RGB** numpy arrays (Pillow decodes RGB; no BGR anywhere);
- labels are (n, 5) float32 `cls xc yc w h`, normalised to the image they belong to;
- `DetectionDataset.shapes` holds each original image's size as **(w, h)** after EXIF rotation,
  while `batch_shapes` and letterbox `new_shape` are **(h, w)**, as in YOLOv5.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from yolo.convention import DEFAULT as DEFAULT_CONVENTION
from yolo.convention import InputConvention
from yolo.data.augment import augment_hsv, mixup, mosaic_tile, random_perspective, xywhn2xyxy, xyxy2xywhn
from yolo.data.cache import CACHE_MODES, PackedImages, auto_cache_limit
from yolo.data.files import DataError, PathLike, img2label_path, non_image_files
from yolo.data.images import PAD_COLOR, image_size, letterbox, load_image, scaled_side
from yolo.data.labels import LabelIssue, LabelReport, read_label_file

RECT_BATCHES = ("exact", "yolov5")  # scoring batches: one shape each, or YOLOv5's consecutive groups


@dataclass
class _Scan:
    """What checking one image and its label file found (computed in a thread at dataset init)."""

    size: tuple[int, int] | None  # None: the image cannot be used (issues says why)
    labels: np.ndarray
    issues: list[LabelIssue]
    counters: dict[str, int]
    label_state: str  # ok | missing | empty


def _scan_one(img: Path, nc: int | None) -> _Scan:
    empty = np.zeros((0, 5), np.float32)
    try:
        size = image_size(img)
    except DataError as e:
        return _Scan(None, empty, [LabelIssue(img, 0, str(e), "unreadable", getattr(e, "kind", ""))], {}, "ok")
    lb_path = img2label_path(img)
    if not lb_path.is_file():
        return _Scan(size, empty, [], {}, "missing")
    labels, issues, counters = read_label_file(lb_path, nc)
    return _Scan(size, labels, issues, counters, "ok" if len(labels) else "empty")


def _scan_key(files: list[Path], nc: int | None) -> str:
    """The same images checked against the same class count give the same report: say it once per run."""
    return hashlib.sha1("\n".join([str(nc), *map(str, files)]).encode()).hexdigest()


def _ignored(files: list[Path]) -> list[LabelIssue]:
    """Non-image files in the image folders (files.non_image_files), as issues the data check counts."""
    return [
        LabelIssue(f, 0, f"not an image ({f.suffix or 'no suffix'}), not used", "ignored", f.suffix or "no suffix")
        for f in non_image_files(files)
    ]


class DetectionDataset(Dataset):
    """YOLO-format detection dataset with YOLOv5's letterbox, rectangular batches and training augmentation.

    `__getitem__` returns (uint8 3xHxW RGB tensor, float (n, 6) `[0, cls, xc, yc, w, h]` normalised to the
    returned image, path, ((h0, w0), ((h / h0, w / w0), (padw, padh)))) - what `scale_boxes` needs.
    `shapes` is (n, 2) original (w, h); `batch_shapes` is (nb, 2) (h, w). Set `mosaic = False` to stop mosaic
    (e.g. for the last epochs).
    """

    def __init__(
        self,
        image_files: Sequence[PathLike],
        img_size: int = 640,
        names: list[str] | None = None,
        augment: bool = False,
        hyp: dict | None = None,
        rect: bool = False,
        batch_size: int = 16,
        stride: int = 32,
        pad: float = 0.0,
        prefix: str = "",
        rect_batches: str = "yolov5",
        cache: str = "auto",
        convention: InputConvention = DEFAULT_CONVENTION,
    ) -> None:
        if rect_batches not in RECT_BATCHES:
            raise ValueError(f"rect_batches: expected one of {', '.join(RECT_BATCHES)}, got {rect_batches!r}")
        if cache not in CACHE_MODES:
            raise ValueError(f"cache: expected one of {', '.join(CACHE_MODES)}, got {cache!r}")
        if convention.stretch and rect:
            raise ValueError("a stretched input is square: rect batches do not apply (rect=False)")
        self.convention = convention
        self.img_size = img_size
        self.names = list(names) if names is not None else None
        self.augment = augment
        self.hyp = dict(hyp or {})
        self.rect = rect
        self.stride = stride
        self.prefix = prefix
        self.mosaic = augment and not rect
        self.mosaic_border = (-img_size // 2, -img_size // 2)
        self._scan([Path(f) for f in image_files])
        self.n = len(self.im_files)
        self.indices = np.arange(self.n)
        self.batch = np.floor(np.arange(self.n) / batch_size).astype(int)
        self.batch_shapes = None
        if rect and rect_batches == "exact":
            self._make_exact_rect_shapes(batch_size, stride, pad)
        elif rect:
            self._make_rect_shapes(batch_size, stride, pad)
        self._cached: PackedImages | None = None
        if cache == "ram" or (cache == "auto" and self.cache_bytes() <= auto_cache_limit()):
            self._fill_cache()

    def cache_bytes(self) -> int:
        """Memory the decoded images take at img_size (long side), as load_image returns them."""
        if self.convention.stretch:
            return self.n * self.img_size * self.img_size * 3
        r = self.img_size / self.shapes.max(1)
        return int(sum(scaled_side(int(w), k) * scaled_side(int(h), k) * 3 for (w, h), k in zip(self.shapes, r)))

    def _fill_cache(self) -> None:
        """Decode every image once (a loader without workers otherwise decodes and resizes every image every
        epoch: 2.4x the batch time on helmets)."""
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:
            images = pool.map(lambda f: load_image(f, self.img_size, self.convention.stretch), self.im_files)
            self._cached = PackedImages(images, self.cache_bytes())

    def image(self, index: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
        """load_image of image `index` at img_size, from memory when cached."""
        if self._cached is not None:
            return self._cached[index]
        return load_image(self.im_files[index], self.img_size, self.convention.stretch)

    def _scan(self, files: list[Path]) -> None:
        """Check every image and parse every label once, keeping only readable images; `self.report` counts and
        lists everything dropped, clipped or not used (the data check that create_dataloader says or enforces)."""
        nc = len(self.names) if self.names is not None else None
        workers = min(8, os.cpu_count() or 1)
        with ThreadPoolExecutor(workers) as pool:
            scans = list(pool.map(lambda f: _scan_one(f, nc), files))
        rep = LabelReport(prefix=self.prefix, key=_scan_key(files, nc))
        self.im_files, self.labels, shapes = [], [], []
        for f, sc in zip(files, scans):
            rep.issues += sc.issues
            if sc.size is None:
                rep.unreadable += 1
                continue
            self.im_files.append(f)
            self.labels.append(sc.labels)
            shapes.append(sc.size)
            for k, v in sc.counters.items():
                setattr(rep, k, getattr(rep, k) + v)
            rep.missing += sc.label_state == "missing"
            rep.empty += sc.label_state == "empty"
        rep.label_files = len(self.im_files) - rep.missing
        ignored = _ignored(files)
        rep.ignored, rep.issues = len(ignored), rep.issues + ignored
        rep.images, rep.boxes = len(self.im_files), sum(len(lb) for lb in self.labels)
        self.report = rep
        if not self.im_files:
            where = files[0].parent if files else "the image list"
            first = f"; first: {rep.issues[0].offender()}" if rep.issues else ""
            raise DataError(f"{where}: no readable images ({rep.unreadable} unreadable{first})")
        self.shapes = np.array(shapes, dtype=np.int64).reshape(-1, 2)
        self.label_files = [img2label_path(f) for f in self.im_files]

    def _make_rect_shapes(self, batch_size: int, stride: int, pad: float) -> None:
        """Sort by aspect ratio so each batch needs little padding, then size each batch like YOLOv5."""
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        order = ar.argsort()  # the default kind, as YOLOv5: tie order decides which batch an image lands in
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes = self.shapes[order]
        ar = ar[order]
        nb = int(self.batch[-1]) + 1
        shapes = np.ones((nb, 2))
        for i in range(nb):
            ari = ar[self.batch == i]
            mini, maxi = ari.min(), ari.max()
            if maxi < 1:
                shapes[i] = [maxi, 1]
            elif mini > 1:
                shapes[i] = [1, 1 / mini]
        self.batch_shapes = np.ceil(shapes * self.img_size / stride + pad).astype(int) * stride

    def _make_exact_rect_shapes(self, batch_size: int, stride: int, pad: float) -> None:
        """Batch only images that share their own rectangle, so no image is padded more than at batch 1.

        YOLOv5's consecutive batches pad an image to the widest aspect ratio of its batch, which moves the
        score with the batch size (yolov5n on coco128: mAP50 0.534 at batch 1, 0.528 at 16). Here every batch
        holds images of one shape (at most `batch_size` of them), so any batch size scores as batch 1 does.
        """
        ar = self.shapes[:, 1] / self.shapes[:, 0]  # h / w
        own = np.ones((self.n, 2))
        own[ar < 1, 0] = ar[ar < 1]
        own[ar > 1, 1] = 1 / ar[ar > 1]
        own = np.ceil(own * self.img_size / stride + pad).astype(int) * stride
        order = np.lexsort((ar, own[:, 1], own[:, 0]))
        self.im_files = [self.im_files[i] for i in order]
        self.label_files = [self.label_files[i] for i in order]
        self.labels = [self.labels[i] for i in order]
        self.shapes, own = self.shapes[order], own[order]
        batch, shapes, start = np.zeros(self.n, dtype=int), [], 0
        while start < self.n:
            end = start + 1
            while end < self.n and end - start < batch_size and (own[end] == own[start]).all():
                end += 1
            batch[start:end] = len(shapes)
            shapes.append(own[start])
            start = end
        self.batch, self.batch_shapes = batch, np.array(shapes)

    def batch_indices(self) -> list[list[int]]:
        """Image indices of each batch, in order (for a batch sampler when batches differ in size)."""
        return [np.flatnonzero(self.batch == b).tolist() for b in range(int(self.batch[-1]) + 1)]

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, index: int) -> tuple[torch.Tensor, torch.Tensor, str, tuple]:
        # Seeded from torch so DataLoader workers (seeded by the loader's generator) stay reproducible.
        rng = np.random.default_rng(int(torch.randint(0, 2**62, ()).item()))
        return self.get(index, rng)

    def get(self, index: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, str, tuple]:
        """`__getitem__` with an explicit random generator (tests and reproducible previews)."""
        hyp = self.hyp
        if self.mosaic and rng.random() < hyp.get("mosaic", 0.0):
            img, labels = self.load_mosaic(index, rng)
            if rng.random() < hyp.get("mixup", 0.0):
                img, labels = mixup(img, labels, *self.load_mosaic(int(rng.integers(self.n)), rng), rng)
            shapes = (img.shape[:2], ((1.0, 1.0), (0.0, 0.0)))  # a mosaic is its own original
        else:
            img, labels, shapes = self._load_letterboxed(index, rng)
        h, w = img.shape[:2]
        if len(labels):
            labels[:, 1:5] = xyxy2xywhn(labels[:, 1:5], w, h)
        if self.augment:
            img, labels = self._photometric_and_flips(img, labels, rng)
        out = torch.zeros((len(labels), 6))
        out[:, 1:] = torch.from_numpy(labels.astype(np.float32))
        img = self.convention.channels_from_rgb(img)  # augmentation ran in RGB; the model's order only here
        chw = torch.from_numpy(np.ascontiguousarray(img.transpose(2, 0, 1)))
        return chw, out, str(self.im_files[index]), shapes

    def _load_letterboxed(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, tuple]:
        """Single image: resize, letterbox to the (batch) shape, optionally warp; labels as pixel xyxy."""
        img, (h0, w0), (h, w) = self.image(index)
        shape = self.batch_shapes[self.batch[index]] if self.rect else self.img_size
        img, ratio, pad = letterbox(img, shape, auto=False, scaleup=self.augment)  # stretched: already square
        ratio_pad = ((h / h0, w / w0), pad) + (("stretch",) if self.convention.stretch else ())
        shapes = ((h0, w0), ratio_pad)
        labels = self.labels[index].astype(np.float64)
        if len(labels):
            labels[:, 1:] = xywhn2xyxy(labels[:, 1:], ratio[0] * w, ratio[1] * h, pad[0], pad[1])
        if self.augment:
            img, labels = self._geometric(img, labels, rng, (0, 0))
        return img, labels, shapes

    def _geometric(
        self, img: np.ndarray, labels: np.ndarray, rng: np.random.Generator, border: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray]:
        hyp = self.hyp
        return random_perspective(
            img,
            labels,
            rng,
            degrees=hyp.get("degrees", 0.0),
            translate=hyp.get("translate", 0.0),
            scale=hyp.get("scale", 0.0),
            shear=hyp.get("shear", 0.0),
            perspective=hyp.get("perspective", 0.0),
            border=border,
        )

    def _photometric_and_flips(
        self, img: np.ndarray, labels: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        """HSV jitter and flips on normalised labels (flipping just mirrors the centre)."""
        hyp = self.hyp
        img = augment_hsv(img, rng, hyp.get("hsv_h", 0.0), hyp.get("hsv_s", 0.0), hyp.get("hsv_v", 0.0))
        if rng.random() < hyp.get("flipud", 0.0):
            img = img[::-1]
            labels[:, 2] = 1 - labels[:, 2]
        if rng.random() < hyp.get("fliplr", 0.0):
            img = img[:, ::-1]
            labels[:, 1] = 1 - labels[:, 1]
        return img, labels

    def load_mosaic(self, index: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """Four images around a random centre on a 2s canvas, then warped and cropped back to s x s."""
        s = self.img_size
        yc, xc = (int(rng.uniform(-b, 2 * s + b)) for b in self.mosaic_border)
        indices = [index] + [int(i) for i in rng.integers(0, self.n, 3)]
        rng.shuffle(indices)
        canvas = np.full((s * 2, s * 2, 3), PAD_COLOR[0], np.uint8)
        all_labels = []
        for i, idx in enumerate(indices):
            img, _, (h, w) = self.image(idx)
            (x1a, y1a, x2a, y2a), (x1b, y1b, x2b, y2b) = mosaic_tile(i, xc, yc, w, h, s)
            canvas[y1a:y2a, x1a:x2a] = img[y1b:y2b, x1b:x2b]
            labels = self.labels[idx].astype(np.float64)
            if len(labels):
                labels[:, 1:] = xywhn2xyxy(labels[:, 1:], w, h, x1a - x1b, y1a - y1b)
            all_labels.append(labels)
        labels = np.concatenate(all_labels, 0)
        labels[:, 1:] = labels[:, 1:].clip(0, 2 * s)
        return self._geometric(canvas, labels, rng, self.mosaic_border)

    @staticmethod
    def collate_fn(batch: list[tuple]) -> tuple[torch.Tensor, torch.Tensor, tuple[str, ...], tuple]:
        """Stack images and concatenate labels with the image's batch index in column 0.

        Images of different sizes (only possible when a sampler mixes rect batches) are padded bottom/right,
        which leaves `shapes` valid and only needs the normalised labels rescaled.
        """
        imgs, labels, paths, shapes = zip(*batch)
        H, W = max(im.shape[1] for im in imgs), max(im.shape[2] for im in imgs)
        out_imgs, out_labels = [], []
        for i, (im, lb) in enumerate(zip(imgs, labels)):
            lb = lb.clone()
            h, w = im.shape[1:]
            if (h, w) != (H, W):
                padded = torch.full((im.shape[0], H, W), PAD_COLOR[0], dtype=im.dtype)
                padded[:, :h, :w] = im
                im = padded
                lb[:, [2, 4]] *= w / W  # xc, w
                lb[:, [3, 5]] *= h / H  # yc, h
            lb[:, 0] = i
            out_imgs.append(im)
            out_labels.append(lb)
        return torch.stack(out_imgs, 0), torch.cat(out_labels, 0), paths, shapes
