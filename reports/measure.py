"""Measuring the models of a report: export and parity of each checkpoint, boxes on check images, latency of every
file interleaved, mAP through one evaluator. The rows it returns are reports.report.ModelEntry; writing them is
reports.report's.

    entries = build_entries({"baseline": "a.pt", "finetuned": "b.pt"}, run_dir, data="data.yaml", imgsz=320)
    write_report(run_dir, entries)
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from reports.backends import RUNTIME_NAMES, backend_kind, load_backend
from reports.detect import load_predictor, predict
from reports.export import check_parity, export_onnx, prune_summary
from reports.latency import benchmark, cpu_info, file_runner
from reports.report import ModelEntry, no_box_flags
from yolo.checkpoint import load_model
from yolo.data import load_data_yaml
from yolo.val import evaluate


def latency_key(threads: int) -> str:
    return f"onnxruntime {threads} thread{'s' if threads != 1 else ''}"


CHECK_CONF = 0.25  # detections counted on the check images at this confidence (detect's default)
CHECK_IMAGES = 8  # real images the exports are checked and the boxes counted on


def build_entries(
    weights: Mapping[str, str | Path],
    run_dir: str | Path,
    data: Any = None,
    imgsz: int = 640,
    threads: Sequence[int | None] = (1, None),
    runs: int = 50,
    warmup: int = 5,
    eval_kwargs: Mapping[str, Any] | None = None,
    evaluator: str = "auto",
    log=print,
    skip_other_classes: bool = False,
    check_images: Sequence[Any] | None = None,
    derive: Callable[[list[ModelEntry], list], list[ModelEntry]] | None = None,
) -> list[ModelEntry]:
    """Measure models given as role -> .pt (exported to run_dir at a fixed imgsz) or .onnx (used as is).

    Sizes for every model; the ONNX export of each checkpoint checked against PyTorch, and every model's boxes
    counted, on `check_images` (paths or RGB arrays; default: up to CHECK_IMAGES of `data`'s val split, else two
    synthetic images, on which a model may find nothing); latency of all ONNX files interleaved at each thread
    count (None = all usable cores); mAP with yolo.val.evaluate on `data` (a data.yaml path or DataConfig) when
    given, every model through the same evaluator: 'torch' (modules, rectangular batches: the official protocol)
    or 'onnx' (ONNX Runtime, fixed square input); 'auto' is 'onnx' as soon as one model exists only as ONNX.
    A model whose class count differs from the data's is an error (yolo.val.ScoringError), unless
    skip_other_classes: then it is measured but not scored (a pipeline's transfer-learning start point).
    `derive(entries, check_images)` adds rows made from the exported ones (other formats) before anything is
    timed, so they are timed and scored with the rest.
    """
    images = list(check_images or _val_images(data)) or synthetic_images(imgsz, 2)
    entries = [_entry(role, Path(w), Path(run_dir), imgsz, images, log) for role, w in weights.items()]
    if derive is not None:
        entries += derive(entries, images)
    _count_boxes(entries, images, imgsz, log)
    _measure_latency(entries, threads, imgsz, runs, warmup, log)
    if data is not None:
        _score(entries, data, imgsz, evaluator, eval_kwargs, skip_other_classes, log)
    return entries


def _val_images(data: Any) -> list:
    """Up to CHECK_IMAGES of the data's val (else train) images; none without data."""
    if data is None:
        return []

    cfg = data if hasattr(data, "names") else load_data_yaml(data)
    return list(cfg.val or cfg.train)[:CHECK_IMAGES]


def synthetic_images(imgsz: int, n: int) -> list:
    """n random 4:3 RGB images: parity inputs when the user gave no real ones."""

    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (imgsz, int(imgsz * 0.75), 3), dtype=np.uint8) for _ in range(n)]


def _entry(role: str, w: Path, run_dir: Path, imgsz: int, images: Sequence[Any], log) -> ModelEntry:
    """An exported file (.onnx, OpenVINO .xml, ncnn .param) measured as is; a checkpoint exported to
    run_dir/<role>.onnx and checked against PyTorch."""

    if backend_kind(w):
        e = ModelEntry.measure(role, onnx_path=w, imgsz=imgsz)
        e.notes["from"] = backend_kind(w)
        return e
    model, meta = load_model(w)
    onnx_path = export_onnx(model, run_dir / f"{role}.onnx", imgsz, metadata=meta)
    parity = check_parity(model, onnx_path, images, raise_on_fail=False)  # a report still measures it
    log(f"{role}: exported {onnx_path} ({parity.summary()})")
    if not parity.passed:
        log(f"WARNING {role}: the ONNX file does not match PyTorch ({'; '.join(parity.failures)}); its "
            "latency and size are reported, its outputs are not to be trusted")
    e = ModelEntry.measure(role, model, pt_path=w, onnx_path=onnx_path, imgsz=imgsz)
    e.notes["parity"] = parity.to_dict()
    prune_ops = [h for h in meta.get("history", []) if isinstance(h, dict) and h.get("op") == "prune"]
    if prune_ops:
        e.notes["prune"] = prune_summary(prune_ops)
    return e


def _count_boxes(entries: Sequence[ModelEntry], images: Sequence[Any], imgsz: int, log) -> None:
    """notes['boxes']: detections of each model on the check images (a pruned model that finds none is flagged)."""

    for e in entries:
        src = e.model if e.model is not None else e.onnx_path
        if src is None:
            continue
        predictor = load_predictor(src)
        n = sum(len(predict(predictor, img, imgsz, CHECK_CONF)[0]) for img in images)
        e.notes["boxes"] = {"images": len(images), "boxes": n, "conf_thres": CHECK_CONF}
    for role, flag in no_box_flags(entries):
        log(f"WARNING {role}: {flag}")


def _measure_latency(entries: Sequence[ModelEntry], threads, imgsz: int, runs: int, warmup: int, log) -> None:
    """Latency of every exported file (.onnx, .xml, .param) at each thread count, timed interleaved."""

    cores = cpu_info()["usable_cores"]
    for t in threads:
        n = int(t or cores)
        runners = {e.role: file_runner(e.onnx_path, threads=n, imgsz=imgsz) for e in entries if e.onnx_path}
        if not runners:
            break
        res = benchmark(runners, runs=runs, warmup=warmup)
        for e in entries:
            if e.role in res:
                e.latency[latency_key(n)] = res[e.role]
        log("latency " + latency_key(n) + ": " + ", ".join(f"{k} {v['median_ms']:.1f} ms" for k, v in res.items()))
        if t is None and n == 1:
            break


def _score(entries: Sequence[ModelEntry], data, imgsz: int, evaluator: str, eval_kwargs, skip_other: bool, log):
    """mAP of every model on data's val split, all through one evaluator (see build_entries)."""

    kw = {"batch_size": 8, "progress": False, **dict(eval_kwargs or {})}
    if evaluator == "auto":
        evaluator = "torch" if all(e.model is not None for e in entries) else "onnx"
    if evaluator not in ("torch", "onnx"):
        raise ValueError(f"evaluator {evaluator!r}: expected auto, torch or onnx")
    data_cfg = data if hasattr(data, "names") else load_data_yaml(data)
    for e in entries:
        if e.metrics and evaluator == "onnx":  # scored by the same evaluator when it was made (the int8 selection)
            e.notes.setdefault("evaluated_with", "ONNX Runtime, fixed square input (when it was selected)")
            log(f"{e.role}: mAP50 {e.metrics['map50']:.4f} mAP50-95 {e.metrics['map']:.4f} (scored when selected)")
            continue
        src = e.model if evaluator == "torch" else load_backend(e.onnx_path)
        nc = len(src.names)
        if skip_other and nc != data_cfg.nc:
            e.notes["not_scored"] = f"predicts {nc} class{'es' if nc != 1 else ''}, the data has {data_cfg.nc}"
            log(f"{e.role}: not scored ({e.notes['not_scored']})")
            continue
        e.metrics = evaluate(src, data_cfg, imgsz=imgsz, **kw)
        runtime = RUNTIME_NAMES.get(getattr(src, "kind", ""), "ONNX Runtime")
        e.notes["evaluated_with"] = (
            "PyTorch module, rectangular batches" if evaluator == "torch" else f"{runtime}, fixed square input"
        )
        log(f"{e.role}: mAP50 {e.metrics['map50']:.4f} mAP50-95 {e.metrics['map']:.4f}")
