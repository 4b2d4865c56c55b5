"""The model families side by side: size, FLOPs and ONNX Runtime CPU latency at 320 and 416.

yolov5n, a YOLOv5-Lite-s-like model (ShuffleNetV2 backbone), yolov5n on a ShuffleNetV2 backbone, and yolov5n with
RepVGG blocks in its backbone, before (training form: 3x3 + 1x1 + identity branches) and after `reparam` (one 3x3
conv per block). Random weights (latency and size do not depend on them), 80 classes, fixed-shape ONNX, one
thread, every model timed interleaved in the same rounds.

    python bench/families.py [--sizes 320 416 --runs 50]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import tempfile
from pathlib import Path

from common import write_result

from reports.export import export_onnx
from reports.latency import benchmark_files
from yolo.flops import count_gflops, count_params
from yolo.model import build_model
from yolo.repvgg import RepVGG
from yolo.transforms import reparameterize

MODELS = {
    "yolov5n": "yolov5n.yaml",
    "v5lite-s": "v5lite-s.yaml",
    "yolov5n-shufflenetv2": "yolov5n-shufflenetv2.yaml",
    "yolov5n-repvgg (training form)": "yolov5n-repvgg.yaml",
}


@contextlib.contextmanager
def branches_kept():
    """Export RepVGG blocks with their branches, as a model that was never re-parameterised runs."""
    fuse = RepVGG.fuse
    RepVGG.fuse = lambda self: self
    try:
        yield
    finally:
        RepVGG.fuse = fuse


def build_models() -> dict:
    models = {name: build_model(cfg).eval() for name, cfg in MODELS.items()}
    rep = copy.deepcopy(models["yolov5n-repvgg (training form)"])
    reparameterize(rep)
    models["yolov5n-repvgg (after reparam)"] = rep
    return models


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[320, 416])
    ap.add_argument("--runs", type=int, default=50)
    args = ap.parse_args()
    models = build_models()
    figures: dict = {"sizes": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for size in args.sizes:
            paths, info = {}, {}
            for name, m in models.items():
                ctx = branches_kept() if "training form" in name else contextlib.nullcontext()
                with ctx:
                    paths[name] = export_onnx(m, Path(tmp) / f"{name.split()[0]}-{len(paths)}-{size}.onnx", size)
                info[name] = {"params": count_params(m), "gflops": count_gflops(m, size),
                              "onnx_mb": paths[name].stat().st_size / 1e6}
            res = benchmark_files(paths, threads=[1], runs=args.runs, warmup=5, imgsz=size)["results"]["1"]
            for name in models:
                info[name].update(median_ms=res[name]["median_ms"], p90_ms=res[name]["p90_ms"])
                print(size, name, info[name], flush=True)
            figures["sizes"][str(size)] = info
    rows = []
    for name in models:
        cells = [f"{figures['sizes'][str(args.sizes[0])][name]['params'] / 1e6:.3f} M"]
        for size in args.sizes:
            r = figures["sizes"][str(size)][name]
            cells += [f"{r['gflops']:.2f}", f"{r['median_ms']:.1f} ms"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    head = " | ".join(f"GFLOPs {s} | ORT 1-thread median {s}" for s in args.sizes)
    md = (
        "### Model families: size, FLOPs, ONNX Runtime CPU latency (1 thread, interleaved; random weights, 80 "
        "classes)\n\n"
        f"| model | params | {head} |\n|---|---|" + "---|" * (2 * len(args.sizes)) + "\n" + "\n".join(rows)
    )
    write_result("families", figures, md)
    print(md)


if __name__ == "__main__":
    main()
