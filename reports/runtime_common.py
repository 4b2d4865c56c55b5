"""What the ONNX Runtime, OpenVINO and ncnn predictors share: a base class with the predictor interface, a latency
runner for it, locating the model file of an export folder, reading class names, sizes and package versions.

Kept apart from reports.backends (which chooses and imports the runtime modules) so that the runtime modules can
build on it without an import cycle.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import torch

from yolo.convention import from_meta as convention_from_meta
from yolo.imgsz import to_shape


def package_version(name: str) -> str | None:
    """The installed version of a distribution, None when it is not installed (nothing is imported)."""
    try:
        return importlib_metadata.version(name)
    except importlib_metadata.PackageNotFoundError:
        return None


def files_size_mb(path: str | Path) -> float:
    """Size of a model on disk: the file plus its weights file (.xml + .bin, .param + .bin), or a whole folder."""
    p = Path(path)
    files = [f for f in p.iterdir() if f.is_file()] if p.is_dir() else [p]
    if p.suffix.lower() in (".xml", ".param"):
        files.append(p.with_suffix(".bin"))
    return sum(os.path.getsize(f) for f in files if f.is_file()) / 1e6


def find_model_file(path: str | Path, suffix: str, what: str) -> Path:
    """The model file of a path that is the file itself or an export folder holding one (`suffix`: '.xml')."""
    p = Path(path)
    if p.is_dir():
        found = sorted(p.glob(f"*{suffix}"))
        if not found:
            raise FileNotFoundError(f"{p}: no {what} {suffix} in this folder")
        return found[0]
    if not p.is_file():
        raise FileNotFoundError(f"{what} model {p} not found")
    return p


def metadata_names(md: dict[str, Any], nc: int | None) -> list[str]:
    """Class names from metadata: a list, or an {index: name} dict as the official YOLOv5 export writes."""
    names = md.get("names")
    if isinstance(names, dict):
        names = [names[k] for k in sorted(names, key=int)]
    if not names:
        names = [str(i) for i in range(nc or 0)]
    return [str(n) for n in names]


# ------------------------------------------------------------------------------------------- predictors


class FixedInputPredictor:
    """Shared part of the ONNX Runtime, OpenVINO and ncnn predictors: metadata, input checks and batch chunking.

    Subclasses set `path`, `threads`, `metadata`, `input_shape`, `batch_fixed`, `nc`, `kind` and implement
    `run_numpy(x) -> np.ndarray` for one ready (batch_fixed, 3, h, w) array of `input_dtype`. `input_shape` None
    (a dynamic ONNX) accepts any h, w; `batch_fixed` None accepts any batch in one run.
    """

    kind = "?"
    input_dtype: type = np.float32
    path: Path
    threads: int | None = None
    input_shape: tuple[int, int] | None = None
    batch_fixed: int | None = 1
    nc: int | None = None

    def _set_metadata(self, md: dict[str, Any]) -> None:
        self.metadata = md
        self.names: list[str] = metadata_names(md, self.nc)
        self.stride = int(md.get("stride", 32))
        imgsz = md.get("imgsz") or (list(self.input_shape) if self.input_shape else [640, 640])
        self.imgsz: tuple[int, int] = (int(imgsz[0]), int(imgsz[-1])) if isinstance(imgsz, list) else (imgsz, imgsz)
        self.device = torch.device("cpu")
        self.input_convention = convention_from_meta(md)  # how images are fed: val, detect and parity read it

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path.name}, input_shape={self.input_shape}, threads={self.threads})"

    @property
    def size_mb(self) -> float:
        return files_size_mb(self.path)

    def run_numpy(self, x: np.ndarray) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __call__(self, imgs: torch.Tensor | np.ndarray) -> torch.Tensor:
        x = imgs.detach().cpu().numpy() if isinstance(imgs, torch.Tensor) else np.asarray(imgs)
        x = np.ascontiguousarray(x, dtype=self.input_dtype)
        if x.ndim == 3:
            x = x[None]
        if self.input_shape is not None and tuple(x.shape[2:]) != self.input_shape:
            raise ValueError(
                f"{self.path.name} takes fixed {self.input_shape[0]}x{self.input_shape[1]} inputs, "
                f"got {x.shape[2]}x{x.shape[3]}"
            )
        fb = self.batch_fixed or x.shape[0]
        outs = []
        for i in range(0, x.shape[0], fb):  # run in chunks of the fixed batch, the last one padded
            chunk = x[i : i + fb]
            k = chunk.shape[0]
            if k < fb:
                chunk = np.concatenate([chunk, np.zeros((fb - k, *chunk.shape[1:]), chunk.dtype)], 0)
            outs.append(np.asarray(self.run_numpy(chunk), dtype=np.float32)[:k])
        return torch.from_numpy(np.concatenate(outs, 0))

    # nn.Module look-alikes so code written for modules does not trip over a predictor
    def eval(self) -> FixedInputPredictor:
        return self

    def to(self, *args, **kwargs) -> FixedInputPredictor:
        return self


class PredictorRunner:
    """A latency runner (see reports.latency.Runner) for any FixedInputPredictor: one random input, run as is."""

    def __init__(self, det: FixedInputPredictor, imgsz: int | Sequence[int] = 640):
        self.det = det
        self.kind = det.kind
        self.threads = det.threads
        shape = det.input_shape or to_shape(imgsz)
        self.x = np.random.default_rng(0).random((det.batch_fixed or 1, 3, *shape), dtype=np.float32)
        self.shape = list(self.x.shape)

    def __call__(self) -> None:
        self.det.run_numpy(self.x)
