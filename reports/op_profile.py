"""Where an ONNX model's time goes in ONNX Runtime: kernel time per operator type, from ORT's own profiler.

Used to explain an int8 model that is not as fast as its convolutions would suggest: the graph ORT actually
runs (after its fusions: QuickGelu for SiLU in float, QLinearConv from QDQ pairs) is profiled, and each node's
kernel time is summed by operator type and divided by the number of profiled runs.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnxruntime as ort

from reports.onnx_backend import OnnxDetector
from yolo.imgsz import to_shape


def op_type_profile(path: str | Path, threads: int = 1, runs: int = 10, warmup: int = 3,
                    imgsz: int | Sequence[int] = 640) -> dict[str, float]:
    """Mean kernel milliseconds per run for each operator type of `path` (largest first) on one random input."""
    det = OnnxDetector(path, threads=threads)  # reads the fixed input shape and name
    shape = det.input_shape or to_shape(imgsz)
    x = np.random.default_rng(0).random((det.batch_fixed or 1, 3, *shape), dtype=np.float32)
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.enable_profiling = True
    with tempfile.TemporaryDirectory(prefix="ort-profile-") as tmp:
        so.profile_file_prefix = os.path.join(tmp, "profile")
        session = ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])
        for _ in range(warmup):
            session.run(None, {det.input_name: x})
        for _ in range(runs):
            session.run(None, {det.input_name: x})
        events = json.loads(Path(session.end_profiling()).read_text())
    return _sum_by_op(events, runs)  # the warm-up runs are in the file too: counted out by time


def _sum_by_op(events: list[dict], runs: int) -> dict[str, float]:
    """Sum the node kernel times by op type over the last `runs` model runs, in ms per run."""
    model_runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    since = model_runs[-runs]["ts"] if len(model_runs) >= runs else 0
    total: dict[str, float] = {}
    for e in events:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e.get("ts", 0) < since:
            continue
        op = e.get("args", {}).get("op_name", "?")
        total[op] = total.get(op, 0.0) + e.get("dur", 0) / 1000.0 / runs
    return dict(sorted(total.items(), key=lambda kv: -kv[1]))
