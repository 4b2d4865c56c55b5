"""Reading an ONNX file's metadata (ours or official YOLOv5's): shared by the exporter, which checks what it
wrote, and the ONNX Runtime predictor, which takes class names and strides from it."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import onnx


def read_metadata(path_or_model: str | Path | onnx.ModelProto) -> dict[str, Any]:
    """metadata_props of an ONNX file, JSON values decoded (official YOLOv5 dict-literal names too)."""
    m = path_or_model if isinstance(path_or_model, onnx.ModelProto) else onnx.load(str(path_or_model))
    out: dict[str, Any] = {}
    for p in m.metadata_props:
        try:
            out[p.key] = json.loads(p.value)
        except json.JSONDecodeError:
            try:
                out[p.key] = ast.literal_eval(p.value)
            except (ValueError, SyntaxError):
                out[p.key] = p.value
    return out
