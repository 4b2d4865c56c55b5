"""An ONNX Runtime predictor with the interface `yolo.val.evaluate` and `reports.detect` accept.

`OnnxDetector(path)(imgs)` takes a float32 Bx3xHxW tensor (0-1) and returns the decoded (B, N, 5 + nc)
tensor. Class names, max stride and export size come from the file's metadata (ours or official YOLOv5's).
`input_shape` is the fixed (h, w) of a static model (None when h/w are dynamic) and `batch_fixed` the fixed
batch size (None when dynamic); other batch sizes are run in chunks of the fixed size (one image at a time
for the usual batch of 1, the last chunk padded).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort

from reports.onnx_meta import read_metadata
from reports.runtime_common import FixedInputPredictor


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


class OnnxDetector(FixedInputPredictor):
    """Runs a YOLOv5 ONNX file (ours or official) on the CPU provider; metadata, input checks and the fixed-batch
    chunking are the shared FixedInputPredictor's."""

    kind = "onnxruntime"

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
        self.nc = int(out.shape[2]) - 5 if _fixed(out.shape[-1]) else None
        self._set_metadata(read_metadata(self.path))

    def __repr__(self) -> str:
        return (
            f"OnnxDetector({self.path.name}, input_shape={self.input_shape}, batch_fixed={self.batch_fixed}, "
            f"threads={self.threads})"
        )

    def run_numpy(self, x: np.ndarray) -> np.ndarray:
        """One session run on a ready (B, 3, H, W) array."""
        return self.session.run([self.output_name], {self.input_name: x})[0]
