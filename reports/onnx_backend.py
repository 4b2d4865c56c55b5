"""An ONNX Runtime predictor with the interface `yolo.val.evaluate` and `reports.detect` accept.

`OnnxDetector(path)(imgs)` takes a float32 Bx3xHxW tensor (0-1) and returns the decoded (B, N, 5 + nc)
tensor. Class names, max stride and export size come from the file's metadata (ours or official YOLOv5's).
`input_shape` is the fixed (h, w) of a static model (None when h/w are dynamic) and `batch_fixed` the fixed
batch size (None when dynamic); other batch sizes are run in chunks of the fixed size (one image at a time
for the usual batch of 1, the last chunk padded).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from reports.onnx_meta import read_metadata


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """CPU session options: `threads` intra-op threads (None/0 = ORT's default, all physical cores)."""
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.intra_op_num_threads = int(threads or 0)
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.log_severity_level = 3  # errors only: ORT's graph-cleanup warnings are noise to a user
    if threads == 1:
        so.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return so


def _fixed(dim: Any) -> int | None:
    return int(dim) if isinstance(dim, int) and dim > 0 else None


class OnnxDetector:
    """Runs a YOLOv5 ONNX file (ours or official) on the CPU provider."""

    def __init__(self, path: str | Path, threads: int | None = None, providers: list[str] | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"ONNX model {self.path} not found")
        self.threads = threads
        self.session = ort.InferenceSession(
            str(self.path), sess_options=session_options(threads), providers=providers or ["CPUExecutionProvider"]
        )
        inp = self.session.get_inputs()[0]
        out = self.session.get_outputs()[0]
        self.input_name, self.output_name = inp.name, out.name
        shape = list(inp.shape)
        if len(shape) != 4:
            raise ValueError(f"{self.path}: expected a 4-d image input, found shape {shape}")
        self.batch_fixed = _fixed(shape[0])
        h, w = _fixed(shape[2]), _fixed(shape[3])
        self.input_shape: tuple[int, int] | None = (h, w) if h and w else None
        self.input_dtype = np.float16 if "float16" in inp.type else np.float32
        self.metadata = read_metadata(self.path)
        self.nc = int(out.shape[2]) - 5 if _fixed(out.shape[-1]) else None
        names = self.metadata.get("names")
        if not names:
            names = [str(i) for i in range(self.nc or 0)]
        self.names: list[str] = [str(n) for n in names]
        self.stride = int(self.metadata.get("stride", 32))
        imgsz = self.metadata.get("imgsz") or (list(self.input_shape) if self.input_shape else [640, 640])
        self.imgsz: tuple[int, int] = (int(imgsz[0]), int(imgsz[-1])) if isinstance(imgsz, list) else (imgsz, imgsz)
        self.device = torch.device("cpu")

    def __repr__(self) -> str:
        return (
            f"OnnxDetector({self.path.name}, input_shape={self.input_shape}, batch_fixed={self.batch_fixed}, "
            f"threads={self.threads})"
        )

    @property
    def size_mb(self) -> float:
        return os.path.getsize(self.path) / 1e6

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """One session run on a ready (B, 3, H, W) array."""
        return self.session.run([self.output_name], {self.input_name: x})[0]

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
        fb, n = self.batch_fixed, x.shape[0]
        if fb is None or n == fb:
            y = self.run_numpy(x)
        else:  # fixed batch: run in chunks of fb, the last one padded with blank images
            outs = []
            for i in range(0, n, fb):
                chunk = x[i : i + fb]
                k = chunk.shape[0]
                if k < fb:
                    chunk = np.concatenate([chunk, np.zeros((fb - k, *chunk.shape[1:]), chunk.dtype)], 0)
                outs.append(self.run_numpy(chunk)[:k])
            y = np.concatenate(outs, 0)
        return torch.from_numpy(np.asarray(y, dtype=np.float32))

    # nn.Module look-alikes so code written for modules does not trip over a predictor
    def eval(self) -> OnnxDetector:
        return self

    def to(self, *args, **kwargs) -> OnnxDetector:
        return self
