"""Reading an ONNX file's metadata (ours or official YOLOv5's): shared by the exporter, which checks what it
wrote, and the ONNX Runtime predictor, which takes class names and strides from it."""

from __future__ import annotations

import ast
import json
from pathlib import Path
from typing import Any

import onnx


def read_metadata(path_or_model: str | Path | onnx.ModelProto) -> dict[str, Any]:
    """metadata_props of an ONNX file, JSON values decoded.

    `names` comes back as a list in index order whichever way it was written: the official dict literal
    ("{0: 'person', ...}", what this tool writes too) or the JSON list of files from earlier versions.
    """
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
    names = out.get("names")
    if isinstance(names, dict):
        out["names"] = [str(names[k]) for k in sorted(names, key=int)]
    return out
