"""Which runtime runs an exported file, chosen by its suffix; a missing optional runtime as one line.

    load_backend("model.onnx" | "model.xml" | "model.ncnn.param" | "x_openvino_model/" | "x_ncnn_model/", threads)

returns a predictor with the interface `yolo.val.evaluate` and `reports.detect` accept (names, stride,
input_shape, batch_fixed, `__call__(Bx3xHxW tensor) -> (B, anchors, 5 + nc)`). OpenVINO and ncnn are optional
extras: a missing package is one line naming the extra to install (MissingExtraError, a ValueError, so the
command line prints it as `error: ...` and exits 2).
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.onnx_backend import OnnxDetector
from reports.runtime_common import package_version

FORMATS = ("onnx", "openvino", "ncnn")
EXTRA_MODULES = {"openvino": ("openvino",), "ncnn": ("ncnn", "pnnx")}
RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "ncnn": "ncnn", "torch": "torch"}
RUNTIME_NAMES = {"onnxruntime": "ONNX Runtime", "openvino": "OpenVINO", "ncnn": "ncnn"}  # a predictor's kind, said


class MissingExtraError(ValueError):
    """An optional runtime package is not installed; the message names the extra that brings it."""


def require_extra(extra: str, what: str, modules: Sequence[str] | None = None) -> None:
    """Import the extra's packages or raise one line: '<what> needs the <extra> extra: pip install .[<extra>]'.

    Called before anything is written, so a missing package never leaves half an export behind.
    """
    for name in modules or EXTRA_MODULES[extra]:
        try:
            importlib.import_module(name)
        except ImportError:
            raise MissingExtraError(f"{what} needs the {extra} extra: pip install .[{extra}]") from None


def backend_kind(path: str | Path) -> str | None:
    """'onnx' | 'openvino' | 'ncnn' for an exported model path (file or export folder), None otherwise."""
    p = Path(path)
    name = p.name.lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith(".xml") or name.endswith("_openvino_model"):
        return "openvino"
    if name.endswith(".param") or name.endswith("_ncnn_model"):
        return "ncnn"
    if p.is_dir():
        if any(p.glob("*.xml")):
            return "openvino"
        if any(p.glob("*.param")):
            return "ncnn"
    return None


def load_backend(path: str | Path, threads: int | None = None) -> Any:
    """The predictor for an exported file, by suffix (see the module docstring); ValueError for other paths."""
    kind = backend_kind(path)
    if kind == "onnx":
        return OnnxDetector(path, threads=threads)
    if kind == "openvino":
        require_extra("openvino", f"running {Path(path).name}", ("openvino",))
        from reports.openvino_backend import OpenVinoDetector  # needs the optional openvino package

        return OpenVinoDetector(path, threads=threads)
    if kind == "ncnn":
        require_extra("ncnn", f"running {Path(path).name}", ("ncnn",))
        from reports.ncnn_backend import NcnnDetector  # needs the optional ncnn package

        return NcnnDetector(path, threads=threads)
    raise ValueError(f"{path}: not an exported model (expected .onnx, an OpenVINO .xml or an ncnn .param)")


def runtime_label(kind: str) -> str:
    """'openvino 2026.4.1' from a runner kind ('onnxruntime-iobinding' -> 'onnxruntime 1.32.0 iobinding')."""
    base, _, variant = kind.partition("-")
    package = RUNTIME_PACKAGES.get(base)
    if package is None:
        return kind
    return f"{base} {package_version(package) or '?'}" + (f" {variant}" if variant else "")
