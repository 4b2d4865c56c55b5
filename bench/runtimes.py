"""Question: which runtime should a yolov5n user deploy on this CPU, and does int8 pay in any of them?

Exports yolov5n once to ONNX (fixed 640x640, checked against PyTorch), converts it to every format asked for
(ONNX Runtime int8 u8/percentile, OpenVINO fp32, OpenVINO int8 through nncf, ncnn fp32 through pnnx, ncnn int8
through reports.ncnn_int8; the int8 ones calibrated on the same train images), checks each fp32 format against
PyTorch, times them all interleaved in one process at 1 thread and at every usable core, scores each on the val
split (coco128 by default; square letterbox, pycocotools), and writes bench/results/<name>.json and .md. ncnn's
latency on this x86 CPU is a proxy only.

    python bench/runtimes.py                      # defaults: ../shared weights and coco128, 50 runs per setting
    python bench/runtimes.py --formats onnx-fp32 openvino-fp32 openvino-int8 --runs 100
    python bench/runtimes.py --smoke --out /tmp/runtimes-smoke   # plumbing on a tiny model and synthetic data
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any

from common import REPO, SHARED, markdown_table, write_result

FORMATS = ("onnx-fp32", "onnx-int8", "openvino-fp32", "openvino-int8", "ncnn-fp32", "ncnn-int8")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n.pt"))
    ap.add_argument("--data", default=str(SHARED / "datasets" / "coco128" / "coco128.yaml"))
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--formats", nargs="+", choices=FORMATS, default=list(FORMATS))
    ap.add_argument("--threads", nargs="+", default=["1", "all"], help="thread counts; 'all' = every usable core")
    ap.add_argument("--runs", type=int, default=50, help="timed runs per model and thread count (interleaved)")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--calib-images", type=int, default=32, help="coco128 train images calibrating int8")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_runtimes"))
    ap.add_argument("--out", default=None, help="folder for <name>.json/.md (default bench/results)")
    ap.add_argument("--name", default="runtimes",
                    help="result name: runtimes (yolov5n), runtimes_pruned (--weights of a 0.5x FLOPs cut)")
    ap.add_argument("--smoke", action="store_true",
                    help="tiny random model, synthetic 64 px data, 2 runs: checks the plumbing (needs --out)")
    args = ap.parse_args(argv)
    if args.smoke and not args.out:
        ap.error("--smoke needs --out (a smoke run must not overwrite bench/results)")
    return args


def smoke_inputs(work: Path) -> tuple[Any, dict, Path]:
    """A width-0.125 yolov5n with randomised BatchNorm and a 3-class synthetic dataset at 64 px."""
    import torch

    from yolo.model import build_model, load_model_yaml
    from yolo.synthetic import SYNTH_NAMES, make_synthetic_dataset

    cfg = load_model_yaml("yolov5n")
    cfg.update(width_multiple=0.125, nc=len(SYNTH_NAMES))
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.bias.data.normal_(0, 0.5)
    model.names = list(SYNTH_NAMES)
    return model, {}, make_synthetic_dataset(work / "synth", n_train=4, n_val=2, img_size=64)


def build_formats(model, onnx_path: Path, formats: list[str], calib: list, parity_images: list) -> dict[str, dict]:
    """Each asked-for format written next to the ONNX file: {format: {path, parity}} (parity None for int8)."""
    from reports.quantize import Int8Config, quantize_int8
    from reports.runtime_export import check_format_request, check_runtime_parity

    out: dict[str, dict] = {"onnx-fp32": {"path": onnx_path, "parity": "checked at export (reports.export)"}}
    for fmt in sorted(formats, key=FORMATS.index):  # ncnn-fp32 before ncnn-int8, which is made from it
        runtime, _, precision = fmt.partition("-")
        if fmt == "onnx-fp32":
            continue
        check_format_request(runtime, precision == "int8")
        t0 = time.time()
        if fmt == "onnx-int8":
            path = quantize_int8(onnx_path, onnx_path.with_name(f"{onnx_path.stem}-int8.onnx"), calib,
                                 Int8Config("u8", "percentile", len(calib)))  # fmt: skip
        elif runtime == "openvino":
            from reports.openvino_backend import export_openvino

            path = export_openvino(onnx_path, int8=precision == "int8", calib_images=calib)
        else:
            from reports.ncnn_backend import export_ncnn, export_ncnn_int8

            path = out["ncnn-fp32"]["path"] if "ncnn-fp32" in out else export_ncnn(onnx_path)
            if precision == "int8":
                path = export_ncnn_int8(path, calib)
        entry: dict[str, Any] = {"path": path, "export_s": round(time.time() - t0, 1), "parity": None}
        if precision == "fp32":
            from reports.backends import load_backend

            entry["parity"] = check_runtime_parity(model, load_backend(path), parity_images).to_dict()
        out[fmt] = entry
        print(f"{fmt}: {path} ({entry['export_s']} s)")
    return out


def measure(built: dict[str, dict], args: argparse.Namespace, data) -> dict[str, dict]:
    """Latency (interleaved, every format in one process), size and mAP of every built format."""
    from reports.backends import load_backend
    from reports.latency import add_ratios, benchmark_files
    from reports.runtime_common import files_size_mb
    from yolo.val import evaluate

    threads = [None if t == "all" else int(t) for t in args.threads]
    lat = benchmark_files({k: v["path"] for k, v in built.items()}, threads=threads, runs=args.runs,
                          warmup=args.warmup, imgsz=args.imgsz)  # fmt: skip
    for setting in lat["results"].values():
        add_ratios(setting, "onnx-fp32")
    rows = {}
    for name, b in built.items():
        m = evaluate(load_backend(b["path"]), data, imgsz=args.imgsz, batch_size=8, progress=False)
        rows[name] = {**b, "path": str(b["path"]), "size_mb": round(files_size_mb(b["path"]), 2),
                      "map50": m["map50"], "map": m["map"],
                      "latency": {k: v[name] for k, v in lat["results"].items()}}  # fmt: skip
        print(f"{name}: mAP50-95 {m['map']:.4f}, {rows[name]['size_mb']} MB")
    return {"settings": lat["settings"], "formats": rows}


def table(figures: dict) -> str:
    rows = []
    for name, r in figures["formats"].items():
        lat = r["latency"]
        cells = [f"{v['median_ms']:.1f} ({v['speedup']:.2f}x)" for v in lat.values()]
        rows.append([name, next(iter(lat.values()))["runtime"], f"{r['size_mb']:.1f}", f"{r['map']:.4f}", *cells])
    settings = [f"ms, {k} thread{'s' if k != '1' else ''} (vs onnx-fp32)" for k in
                next(iter(figures["formats"].values()))["latency"]]  # fmt: skip
    title = f"**{Path(figures.get('weights') or 'yolov5n').stem}**, square {figures['settings'].get('imgsz', 640)}\n\n"
    return title + markdown_table(["format", "runtime", "MB", "mAP50-95", *settings], rows)


def main(argv: list[str] | None = None) -> int:
    from reports.export import check_parity, export_onnx
    from yolo.checkpoint import load_model
    from yolo.data import load_data_yaml

    args = parse_args(argv)
    work = Path(args.out if args.smoke else args.workdir) / ("work" if args.smoke else "")
    if args.smoke:
        model, meta, data_yaml = smoke_inputs(work)
        args.imgsz, args.runs, args.warmup, args.calib_images = 64, 2, 0, 4
    else:
        model, meta = load_model(args.weights)
        data_yaml = args.data
    data = load_data_yaml(data_yaml)
    parity_images = list(data.val)[:2]
    onnx_path = export_onnx(model, work / "model.onnx", args.imgsz, metadata=meta)
    print(check_parity(model, onnx_path, parity_images).summary())
    built = build_formats(model, onnx_path, args.formats, list(data.train)[: args.calib_images], parity_images)
    figures = measure(built, args, data)
    figures["smoke"] = args.smoke
    figures["weights"] = "smoke" if args.smoke else args.weights
    out = write_result(args.name, figures, table(figures), out_dir=Path(args.out) if args.out else None)
    print(table(figures))
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
