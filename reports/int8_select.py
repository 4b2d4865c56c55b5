"""Choosing an int8 variant on the user's machine: each built, timed interleaved with fp32, scored, and the
fastest one that holds accuracy kept (or none: fp32 stays the deliverable).

Which variant is fastest depends on the CPU and the ORT build (bench/results/int8_profile.md, int8.md), so
`select_int8` measures instead of guessing; `quantize_best` is what `export --int8` and the pipeline call.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from reports.latency import OnnxRunner, benchmark
from reports.onnx_backend import OnnxDetector
from reports.quantize import AUTO_VARIANTS, Int8Config, QuantizeError, quantize_int8
from yolo.data import load_data_yaml
from yolo.fileio import atomic_write_text
from yolo.val import evaluate


@dataclass
class Int8Result:
    config: dict
    path: str
    size_mb: float
    latency_ms: float | None = None
    ratio_to_fp32: float | None = None  # int8 time / fp32 time (lower is faster)
    map50: float | None = None
    map: float | None = None
    holds_accuracy: bool | None = None
    error: str | None = None


@dataclass
class Int8Selection:
    fp32: dict
    variants: list[Int8Result] = field(default_factory=list)
    chosen: str | None = None  # path of the kept int8 model, None when fp32 stays the deliverable
    reason: str = ""
    metrics: dict[str, dict] = field(default_factory=dict)  # path -> full evaluate() result (not serialised)

    def to_dict(self) -> dict:
        return {
            "fp32": self.fp32,
            "variants": [asdict(v) for v in self.variants],
            "chosen": self.chosen,
            "reason": self.reason,
        }


def select_int8(
    fp32_path: str | Path,
    out_dir: str | Path,
    calib_images: Sequence[Any],
    configs: Sequence[Int8Config],
    data_cfg: Any = None,
    map_tolerance: float = 0.01,
    threads: int = 1,
    rounds: int = 30,
    warmup: int = 3,
    eval_kwargs: dict | None = None,
    log=print,
) -> Int8Selection:
    """Build each int8 variant, time it interleaved with fp32 (`threads`), score it when `data_cfg` is given.

    Kept: the fastest variant faster than fp32 whose mAP50-95 is within `map_tolerance` of fp32's (accuracy
    is not checked without data). None kept when no variant qualifies: fp32 stays the deliverable.
    """
    fp32_path, out_dir = Path(fp32_path), Path(out_dir)
    results = _build_variants(fp32_path, out_dir, calib_images, configs, log)
    ok = [r for r in results if r.error is None]
    sel = Int8Selection(fp32={"path": str(fp32_path), "size_mb": os.path.getsize(fp32_path) / 1e6}, variants=results)
    if not ok:
        sel.reason = "no int8 variant could be built"
        return sel
    _time_variants(sel, ok, threads, rounds, warmup, log)
    if data_cfg is not None:
        _score_variants(sel, ok, data_cfg, map_tolerance, eval_kwargs, log)
    _choose(sel, ok, map_tolerance)
    return sel


def _build_variants(fp32_path: Path, out_dir: Path, calib_images, configs, log) -> list[Int8Result]:
    """One quantised file per config (a failed one is kept as a result carrying its error)."""
    results: list[Int8Result] = []
    for cfg in configs:
        path = out_dir / f"{fp32_path.stem}-int8-{cfg.tag}.onnx"
        t0 = time.perf_counter()
        try:
            quantize_int8(fp32_path, path, calib_images, cfg)
        except QuantizeError as e:
            results.append(Int8Result(asdict(cfg), str(path), 0.0, error=str(e)))
            continue
        log(f"int8 {cfg.tag}: quantised in {time.perf_counter() - t0:.1f} s -> {path}")
        results.append(Int8Result(asdict(cfg), str(path), os.path.getsize(path) / 1e6))
    return results


def _time_variants(sel: Int8Selection, ok: list[Int8Result], threads: int, rounds: int, warmup: int, log) -> None:
    """Median latency of fp32 and every variant, timed interleaved; each variant's ratio to fp32."""

    runners = {"fp32": OnnxRunner(sel.fp32["path"], threads)}
    runners.update({Path(r.path).stem: OnnxRunner(r.path, threads) for r in ok})
    lat = benchmark(runners, runs=rounds, warmup=warmup)
    base = lat["fp32"]["median_ms"]
    sel.fp32["latency_ms"] = base
    for r in ok:
        r.latency_ms = lat[Path(r.path).stem]["median_ms"]
        r.ratio_to_fp32 = r.latency_ms / base
        log(f"int8 {Path(r.path).stem}: {r.latency_ms:.1f} ms vs fp32 {base:.1f} ms ({r.ratio_to_fp32:.2f}x the time)")


def _score_variants(sel: Int8Selection, ok: list[Int8Result], data_cfg, map_tolerance: float, eval_kwargs, log):
    """mAP of fp32 and every variant on data_cfg's val split; whether each holds accuracy within the tolerance."""

    kw = {"batch_size": 8, "progress": False, **(eval_kwargs or {})}
    m = evaluate(OnnxDetector(sel.fp32["path"]), data_cfg, **kw)
    sel.metrics[sel.fp32["path"]] = m
    sel.fp32.update(map50=m["map50"], map=m["map"])
    log(f"fp32: mAP50 {m['map50']:.4f} mAP50-95 {m['map']:.4f}")
    for r in ok:
        m = evaluate(OnnxDetector(r.path), data_cfg, **kw)
        sel.metrics[r.path] = m
        r.map50, r.map = m["map50"], m["map"]
        r.holds_accuracy = r.map >= sel.fp32["map"] - map_tolerance
        log(f"int8 {Path(r.path).stem}: mAP50 {r.map50:.4f} mAP50-95 {r.map:.4f}")


def _choose(sel: Int8Selection, ok: list[Int8Result], map_tolerance: float) -> None:
    """sel.chosen: the fastest variant faster than fp32 that holds accuracy (or none), and the reason."""
    candidates = [r for r in ok if r.ratio_to_fp32 < 1.0 and r.holds_accuracy is not False]
    if candidates:
        best = min(candidates, key=lambda r: r.latency_ms)
        sel.chosen = best.path
        acc = "accuracy not checked (no data)" if best.holds_accuracy is None else f"mAP50-95 {best.map:.4f}"
        sel.reason = f"fastest variant within tolerance: {best.ratio_to_fp32:.2f}x the fp32 time, {acc}"
        return
    slow = all(r.ratio_to_fp32 >= 1.0 for r in ok)
    sel.reason = (
        "no int8 variant is faster than fp32 on this CPU"
        if slow
        else f"no faster int8 variant keeps mAP50-95 within {map_tolerance} of fp32"
    ) + "; fp32 stays the deliverable"


def quantize_best(
    fp32_path: str | Path,
    data: Any,
    out_path: str | Path,
    imgsz: int = 640,
    variants: Sequence[str] = AUTO_VARIANTS,
    method: str = "percentile",
    calib_images: int = 32,
    map_tolerance: float = 0.01,
    score: bool = True,
    rounds: int = 30,
    keep_best_measured: bool = True,
    log=print,
) -> dict[str, Any]:
    """Quantise `fp32_path` as each variant (tags, Int8Config.from_tag), keep the fastest that holds accuracy at
    `out_path`.

    `data` (data.yaml path or DataConfig): its train images calibrate, its val images score (unless
    `score=False`). Returns {"path", "chosen", "reason", "metrics", "latency", "notes"}: `chosen` says whether
    the int8 model qualified; when none did, fp32 stays the deliverable and, with `keep_best_measured`, the
    fastest variant is still written to `out_path` (for the report) - otherwise "path" is None.
    `latency` uses the report's setting name ('onnxruntime 1 thread'); selection details are in notes.
    A JSON summary is written next to `out_path` (same stem, .json).
    """

    fp32_path, out_path = Path(fp32_path), Path(out_path)
    cfg_data = data if hasattr(data, "train") else load_data_yaml(data)
    images = list(cfg_data.train)[:calib_images]
    if not images:
        raise QuantizeError(f"{getattr(cfg_data, 'yaml_path', data)}: the train split has no images to calibrate on")
    configs = [Int8Config.from_tag(v, method, calib_images) for v in variants]
    scoring = cfg_data if (score and cfg_data.val) else None
    sel = select_int8(
        fp32_path, out_path.parent, images, configs, data_cfg=scoring, map_tolerance=map_tolerance,
        rounds=rounds, eval_kwargs={"imgsz": imgsz}, log=log,
    )  # fmt: skip
    result = _keep_one(sel, fp32_path, out_path, keep_best_measured)
    summary = {k: v for k, v in result.items() if k != "metrics"}
    atomic_write_text(out_path.with_suffix(".json"), json.dumps(summary, indent=2, default=str) + "\n")
    log(f"int8: {sel.reason}")
    return result


def _keep_one(sel: Int8Selection, fp32_path: Path, out_path: Path, keep_best_measured: bool) -> dict[str, Any]:
    """Move the chosen variant (or, with keep_best_measured, the fastest one) to out_path, delete the others,
    and describe the outcome (quantize_best's result)."""

    ok = [v for v in sel.variants if v.error is None]
    keep = sel.chosen or (min(ok, key=lambda v: v.latency_ms).path if ok and keep_best_measured else None)
    kept = next((v for v in ok if v.path == keep), None)
    for v in sel.variants:
        if v.path != keep:
            Path(v.path).unlink(missing_ok=True)
    result: dict[str, Any] = {
        "path": None, "chosen": sel.chosen is not None, "reason": sel.reason, "metrics": {}, "latency": {},
        "notes": {"selection": sel.to_dict(), "deliverable": str(fp32_path)},
    }  # fmt: skip
    if not keep or kept is None:
        return result
    shutil.move(keep, out_path)
    result["path"] = str(out_path)
    result["metrics"] = sel.metrics.get(keep, {})
    result["latency"] = {
        "onnxruntime 1 thread": {"median_ms": kept.latency_ms, "fp32_median_ms": sel.fp32.get("latency_ms")}
    }
    result["notes"]["int8"] = kept.config
    if sel.chosen:
        result["notes"]["deliverable"] = str(out_path)
    else:
        result["notes"]["not_kept"] = "measured for the report only: " + sel.reason
    return result
