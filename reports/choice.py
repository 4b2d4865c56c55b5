"""Which row of a report to deploy: the fastest format of a model that holds its accuracy.

A run that exports its fine-tuned model to several formats (ONNX Runtime fp32 and int8, OpenVINO, ncnn) asks
one question of the report: which file do I ship? The answer is the fastest row made from that model (its
own row, or one whose notes say `derived_from` it) whose mAP50-95 is within `tolerance` of the model's own.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

DEFAULT_TOLERANCE = 0.01  # mAP50-95, the int8 selection's tolerance


def fastest_holding(entries: Sequence[Any], source: str = "finetuned",
                    tolerance: float = DEFAULT_TOLERANCE) -> dict[str, Any] | None:
    """{role, median_ms, map, source_map, tolerance, speedup_vs_source, candidates} or None.

    None when there is nothing to choose: no `source` row, fewer than two formats of it, or no scores (without
    mAP the accuracy cannot be held, so no format is named).
    """
    src = next((e for e in entries if e.role == source), None)
    family = [e for e in entries if e is src or e.notes.get("derived_from") == source]
    if src is None or len(family) < 2 or src.metrics.get("map") is None:
        return None
    timed = [e for e in family if (e.main_latency or {}).get("median_ms") and e.metrics.get("map") is not None]
    holding = [e for e in timed if e.metrics["map"] >= src.metrics["map"] - tolerance]
    if not holding:
        return None
    best = min(holding, key=lambda e: e.main_latency["median_ms"])
    src_ms = (src.main_latency or {}).get("median_ms")
    ms = best.main_latency["median_ms"]
    return {"role": best.role, "path": best.onnx_path, "median_ms": ms, "map": best.metrics["map"],
            "source": source, "source_map": src.metrics["map"], "tolerance": tolerance,
            "speedup_vs_source": src_ms / ms if src_ms else None, "candidates": [e.role for e in timed]}


def describe(choice: dict[str, Any] | None) -> str | None:
    """One line for the terminal and report.md."""
    if not choice:
        return None
    speed = f", {choice['speedup_vs_source']:.2f}x the {choice['source']} ONNX" if choice["speedup_vs_source"] else ""
    return (f"fastest format holding accuracy: {choice['role']} ({choice['median_ms']:.1f} ms{speed}; mAP50-95 "
            f"{choice['map']:.4f} vs {choice['source_map']:.4f}, tolerance {choice['tolerance']:g})")
