"""The report stage's extra rows: the fine-tuned model in every deployment format the run asks for.

`--int8` adds ONNX Runtime int8 (the fastest variant that holds accuracy, `reports.int8_select.quantize_best`);
`--formats openvino ncnn` adds those runtimes' fp32 files, and with `--int8` also their int8 (OpenVINO through nncf,
ncnn through reports.ncnn_int8), each kept only when it holds the mAP50-95 tolerance. Every row
is marked as derived from the fine-tuned model, so the report can name the fastest format that holds its accuracy.
They are built after the report has exported and checked the fine-tuned ONNX, and before anything is timed, so
all formats are timed interleaved and scored by the same evaluator as the other rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from reports.int8_select import quantize_best
from reports.report import ModelEntry
from reports.runtime_export import Int8Options, export_format

SOURCE = "finetuned"  # the row every format is made from
# OPENVINO_LAST: ncnn's conversion runs the pnnx program as a subprocess; a subprocess started after OpenVINO had run
# in the same process was followed by a segmentation fault (docs/runtimes.md, Known limits), so OpenVINO goes last.
# Since OpenVINO keeps one Core per process (reports.openvino_backend.shared_core) that order also passed once the
# other way round; it is kept, as it costs nothing.


def format_entries(entries: Sequence[ModelEntry], images: Sequence[Any], data: Any, imgsz: int,
                   formats: Sequence[str], int8: bool, log=print) -> list[ModelEntry]:
    """New rows for the fine-tuned model's formats; `images` check each one against PyTorch."""
    src = next((e for e in entries if e.role == SOURCE), None)
    if src is None or src.model is None or src.onnx_path is None:
        log(f"formats: no {SOURCE} checkpoint in the report, nothing to convert")
        return []
    onnx_path = Path(src.onnx_path)
    rows: list[ModelEntry] = []
    if int8:
        q = quantize_best(onnx_path, data, onnx_path.with_name(f"{SOURCE}_int8.onnx"), imgsz=imgsz, log=log)
        if q["path"]:  # scored while selected (the same val split, size and ONNX evaluator): not scored again
            rows.append(_derived("int8", q["path"], imgsz, q.get("notes", {}), metrics=q.get("metrics") or {}))
    for fmt in sorted(formats, key=lambda f: f == "openvino"):  # ncnn first: see OPENVINO_LAST
        opts = Int8Options(data=data, imgsz=imgsz) if int8 else None  # calibrated on the same train images
        res = export_format(fmt, src.model, onnx_path, images, int8=opts, threads=1, log=log)
        rows.append(_derived(fmt, res["path"], imgsz, {"parity": res["parity"].to_dict()}))
        q8 = res.get("int8") or {}
        if q8.get("path"):
            rows.append(_derived(f"{fmt} int8", q8["path"], imgsz, {"accuracy": q8.get("accuracy")}))
    return rows


def _derived(role: str, path: str | Path, imgsz: int, notes: dict, metrics: dict | None = None) -> ModelEntry:
    e = ModelEntry.measure(role, onnx_path=path, imgsz=imgsz, notes=dict(notes), metrics=dict(metrics or {}))
    e.notes["derived_from"] = SOURCE
    return e
