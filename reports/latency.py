"""Latency measurement: several models timed interleaved in one process so their ratios are fair.

Each round runs every model once (the order rotates from round to round), after warm-up runs; the figures
are the median and 90th percentile of the per-run wall times. Shared machines are noisy: compare ratios
measured side by side in one call, not absolute times from different calls.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from importlib import metadata as importlib_metadata
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch

from reports.backends import backend_kind, load_backend, runtime_label
from reports.export import export_ready
from reports.onnx_backend import OnnxDetector
from reports.runtime_common import PredictorRunner, package_version
from yolo.device import usable_cores
from yolo.imgsz import to_shape

CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "amx_bf16", "f16c")


def cpu_info() -> dict[str, Any]:
    """CPU model, the SIMD flags that matter for inference, logical cores and usable cores."""
    model, flags = platform.processor() or platform.machine(), set()
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        key = key.strip()
        if key == "model name" and model in ("", platform.machine(), platform.processor()):
            model = value.strip()
        elif key == "flags" and not flags:
            flags = set(value.split())
    return {
        "model": model,
        "flags": [f for f in CPU_FLAGS if f in flags],
        "logical_cores": os.cpu_count(),
        "usable_cores": usable_cores(),
        "machine": platform.machine(),
    }


def environment() -> dict[str, Any]:
    """Versions and machine facts a latency figure depends on."""
    env: dict[str, Any] = {"python": sys.version.split()[0], "platform": platform.platform(), "cpu": cpu_info()}
    for mod in ("torch", "onnxruntime", "onnx", "numpy"):
        try:
            env[mod] = __import__(mod).__version__
        except ImportError:
            env[mod] = None
    for dist in ("openvino", "ncnn"):  # optional runtimes: the installed version, without importing them
        env[dist] = package_version(dist)
    env["cuda"] = torch.cuda.get_device_name(0) if torch.cuda.is_available() else None
    return env


# --------------------------------------------------------------------------------------------- runners


class Runner:
    """One model ready to run on one fixed input: `__call__()` runs it once."""

    kind = "?"
    threads: int | None = None

    def __call__(self) -> None:  # pragma: no cover - interface
        raise NotImplementedError


class OnnxRunner(Runner):
    """ONNX Runtime CPU session with `threads` intra-op threads on a random input of the model's fixed shape.

    io_binding=True binds that input and a preallocated output once and runs with `run_with_iobinding`, as a
    deployment loop does: each run then skips allocating and copying out the (N, anchors, 5+nc) output (8.6 MB
    for yolov5n at 640), about 1 ms that is the same for every model and so weighs most on the smallest.
    """

    kind = "onnxruntime"

    def __init__(self, path: str | Path, threads: int | None = 1, imgsz: int | Sequence[int] = 640, batch: int = 1,
                 io_binding: bool = False):
        self.det = OnnxDetector(path, threads=threads)
        self.threads = threads
        shape = self.det.input_shape or to_shape(imgsz)
        b = self.det.batch_fixed or batch
        rng = np.random.default_rng(0)
        self.x = rng.random((b, 3, *shape), dtype=np.float32)
        self.shape = [b, 3, *shape]
        self.binding = self._bind() if io_binding else None
        if io_binding:
            self.kind = "onnxruntime-iobinding"

    def _bind(self):
        session = self.det.session
        binding = session.io_binding()
        self._x_value = ort.OrtValue.ortvalue_from_numpy(self.x)
        binding.bind_ortvalue_input(self.det.input_name, self._x_value)
        out_shape = session.run(None, {self.det.input_name: self.x})[0].shape
        self._y_value = ort.OrtValue.ortvalue_from_shape_and_type(list(out_shape), np.float32)
        binding.bind_ortvalue_output(self.det.output_name, self._y_value)
        return binding

    def __call__(self) -> None:
        if self.binding is not None:
            self.det.session.run_with_iobinding(self.binding)
        else:
            self.det.run_numpy(self.x)


class TorchRunner(Runner):
    """A torch module (fused, eval) on CPU or CUDA; `threads` sets torch's intra-op threads before each run."""

    kind = "torch"

    def __init__(self, model, threads: int | None = 1, imgsz: int | Sequence[int] = 640, device: str = "cpu"):
        self.torch = torch
        self.device = torch.device(device)
        self.model = export_ready(model).to(self.device)
        self.threads = threads
        self.x = torch.rand(1, 3, *to_shape(imgsz), device=self.device)
        self.shape = list(self.x.shape)

    def __call__(self) -> None:
        torch = self.torch
        if self.threads:
            torch.set_num_threads(self.threads)
        with torch.inference_mode():
            self.model(self.x)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


# --------------------------------------------------------------------------------------------- timing


def summarise(times_ms: Sequence[float]) -> dict[str, float]:
    a = np.asarray(times_ms, dtype=np.float64)
    return {
        "median_ms": float(statistics.median(a)),
        "p90_ms": float(np.percentile(a, 90)),
        "mean_ms": float(a.mean()),
        "min_ms": float(a.min()),
        "runs": len(a),
    }


def benchmark(
    runners: Mapping[str, Callable[[], None]],
    runs: int = 50,
    warmup: int = 5,
    burst: int = 1,
) -> dict[str, dict[str, Any]]:
    """Time every runner `runs` times, interleaved: each round runs each model `burst` times, the start rotating.

    Returns name -> {median_ms, p90_ms, mean_ms, min_ms, runs, threads, kind}.
    """
    if runs < 1 or burst < 1:
        raise ValueError("runs and burst must be >= 1")
    names = list(runners)
    for name in names:
        for _ in range(warmup):
            runners[name]()
    times: dict[str, list[float]] = {n: [] for n in names}
    rounds = -(-runs // burst)
    for r in range(rounds):
        order = names[r % len(names) :] + names[: r % len(names)]
        for name in order:
            fn = runners[name]
            for _ in range(burst):
                if len(times[name]) >= runs:
                    break
                t0 = time.perf_counter()
                fn()
                times[name].append((time.perf_counter() - t0) * 1e3)
    out = {}
    for name in names:
        out[name] = summarise(times[name])
        out[name]["threads"] = getattr(runners[name], "threads", None)
        out[name]["kind"] = getattr(runners[name], "kind", "callable")
        out[name]["runtime"] = runtime_label(out[name]["kind"])  # e.g. 'openvino 2026.4.1': what ran it
    return out


def file_runner(path: str | Path, threads: int | None, imgsz: int | Sequence[int] = 640,
                io_binding: bool = False) -> Runner:
    """The runner for an exported file by suffix: OnnxRunner for .onnx, else the OpenVINO / ncnn predictor's."""
    if backend_kind(path) == "onnx":
        return OnnxRunner(path, threads=threads, imgsz=imgsz, io_binding=io_binding)
    return PredictorRunner(load_backend(path, threads=threads), imgsz=imgsz)


def benchmark_files(
    paths: Mapping[str, str | Path],
    threads: Sequence[int | None] = (1, None),
    runs: int = 50,
    warmup: int = 5,
    imgsz: int | Sequence[int] = 640,
    torch_models: Mapping[str, Any] | None = None,
    device: str = "cpu",
    io_binding: bool = False,
) -> dict[str, Any]:
    """Exported files (.onnx, OpenVINO .xml, ncnn .param) and optional torch modules timed interleaved at each
    thread count (None = all cores);
    io_binding: ONNX Runtime runs on bound, preallocated input and output (see OnnxRunner).

    Returns {"environment": ..., "settings": ..., "results": {"1": {name: stats}, "all": {...}}}.
    """
    res: dict[str, Any] = {}
    for t in threads:
        key = str(t) if t else "all"
        n = t or (cpu_info()["usable_cores"])
        runners: dict[str, Runner] = {
            name: file_runner(p, threads=n, imgsz=imgsz, io_binding=io_binding) for name, p in paths.items()
        }
        for name, model in (torch_models or {}).items():
            runners[f"{name} (torch {device})"] = TorchRunner(model, threads=n, imgsz=imgsz, device=device)
        res[key] = benchmark(runners, runs=runs, warmup=warmup)
        for name in res[key]:
            res[key][name]["threads"] = n
    return {
        "environment": environment(),
        "settings": {"runs": runs, "warmup": warmup, "imgsz": imgsz, "interleaved": "round-robin, rotating start",
                     "io_binding": io_binding},
        "results": res,
    }


def add_ratios(results: dict[str, dict[str, Any]], baseline: str) -> None:
    """Add `ratio_to_<baseline>` (time / baseline time) and `speedup` to every entry, in place."""
    base = results[baseline]["median_ms"]
    for r in results.values():
        r["ratio_to_baseline"] = r["median_ms"] / base
        r["speedup"] = base / r["median_ms"]


PACKAGES = (
    "yolov5-slim",
    "torch",
    "torch-pruning",
    "numpy",
    "onnx",
    "onnxruntime",
    "onnxslim",
    "pycocotools",
    "Pillow",
    "PyYAML",
    "matplotlib",
    "rich",
)


def package_versions(names: Sequence[str] = PACKAGES) -> dict[str, str | None]:
    """Installed versions of the packages a report depends on (None when absent), for reproducing it."""
    out: dict[str, str | None] = {}
    for n in names:
        try:
            out[n] = importlib_metadata.version(n)
        except importlib_metadata.PackageNotFoundError:
            out[n] = None
    return out
