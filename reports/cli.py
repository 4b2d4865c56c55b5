"""Sub-commands `export`, `benchmark`, `report` and `detect` for the top-level `prune.py` dispatcher.

    parser = argparse.ArgumentParser(); sub = parser.add_subparsers(dest="command")
    reports.cli.register(sub); args = parser.parse_args(); args.func(args)

Each `func(args)` returns 0 and raises a ValueError / OSError subclass with a one-line message on bad input.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
from rich.console import Console
from rich.table import Table

from reports.imaging import list_images
from yolo.checkpoint import load_model
from yolo.data import load_data_yaml
from yolo.fileio import atomic_write_text, check_writable
from yolo.imgsz import to_shape
from yolo.transforms import replace_focus

SHAPE_HELP = "inference size: one int (square) or two ints h w; each a multiple of the model's max stride"


def _imgsz(v: list[int] | None, default: int = 640) -> int | tuple[int, int]:
    if not v:
        return int(default)
    if len(v) == 1:
        return int(v[0])
    if len(v) == 2:
        return int(v[0]), int(v[1])
    raise ValueError(f"--imgsz takes one or two integers, got {len(v)}")


def _threads(values: list[str] | None) -> list[int | None]:
    out: list[int | None] = []
    for v in values or ["1", "all"]:
        if str(v).lower() in ("all", "0"):
            out.append(None)
        elif str(v).isdigit():
            out.append(int(v))
        else:
            raise ValueError(f"--threads {v!r}: expected a positive integer or 'all'")
    return out


# ----------------------------------------------------------------------------------------------- export


def cmd_export(args: Any) -> int:
    # start-up: onnx and onnxruntime (1.6 s of a 1.9 s prune.py start, measured) load only for the command that runs
    from reports.export import ExportError, check_parity, export_onnx
    from reports.quantize import check_variant_tags
    from reports.runtime_export import check_format_request

    check_format_request(args.format, args.int8, args.dynamic)  # one line, before anything is written
    if args.int8 and not args.calib_data:
        raise ValueError("--int8 needs --calib-data DATA.yaml (its train images calibrate the activations)")
    if args.int8_variants:
        check_variant_tags(args.int8_variants, "--int8-variants")
    weights = Path(args.weights)
    model, meta = load_model(weights)
    if getattr(args, "replace_focus", False):  # exact rewrite: no Slice/Concat stem in the graph

        replace_focus(model)
    imgsz = _imgsz(args.imgsz, int(meta.get("imgsz") or 640))
    out = Path(args.out) if args.out else weights.with_suffix(".onnx")
    if out.suffix.lower() != ".onnx":
        out = out / f"{weights.stem}.onnx"
    data = None  # read before the export, so a bad --calib-data / --parity-source leaves no file behind
    if args.calib_data:

        data = load_data_yaml(args.calib_data)
    if args.parity_source:
        parity_images: list[Any] = list_images(args.parity_source)[:4]
    elif data is not None:
        parity_images = list(data.val or data.train)[:2]
    else:
        parity_images = _synthetic_images(imgsz)
    path = export_onnx(
        model,
        out,
        imgsz=imgsz,
        opset=args.opset,
        dynamic=args.dynamic,
        simplify=not args.no_simplify,
        metadata=meta,
        batch=args.batch,
    )
    try:
        rep = check_parity(model, path, parity_images, threads=args.threads)
    except ExportError:
        path.unlink(missing_ok=True)  # a file that does not match its model is not handed out
        raise
    print(f"exported {path} ({os.path.getsize(path) / 1e6:.1f} MB)")
    print(rep.summary())
    if not (args.parity_source or data is not None):
        print("(parity checked on synthetic images: give --parity-source for real ones)")
    if args.format != "onnx":
        _export_runtime(args, model, path, parity_images, data, imgsz)
    elif args.int8:
        _export_int8(args, path, data, imgsz if isinstance(imgsz, int) else max(imgsz))
    return 0


def _export_runtime(args: Any, model, onnx_path: Path, parity_images: list, data, imgsz) -> None:
    """--format openvino|ncnn: the checked ONNX converted (and with --int8, quantised) for that runtime."""
    # start-up: onnx, onnxruntime and torch.onnx load only for the command that runs (see cmd_export)
    from reports.runtime_export import Int8Options, export_format

    int8 = None
    if args.int8:
        size = imgsz if isinstance(imgsz, int) else max(imgsz)
        int8 = Int8Options(data, args.calib_images, args.int8_map_tol, not args.int8_no_eval, size)
    export_format(args.format, model, onnx_path, parity_images, int8=int8, threads=args.threads)


def _synthetic_images(imgsz) -> list:


    h, w = to_shape(imgsz)
    rng = np.random.default_rng(0)
    return [rng.integers(0, 256, (h, int(w * 0.75), 3), dtype=np.uint8) for _ in range(2)]


def _export_int8(args: Any, fp32: Path, data, imgsz: int) -> None:
    # start-up: onnx and onnxruntime (1.6 s of a 1.9 s prune.py start, measured) load only for the command that runs
    from reports.int8_select import quantize_best
    from reports.quantize import AUTO_VARIANTS


    explicit = args.int8_activations != "auto" or bool(args.int8_variants)
    variants = args.int8_variants or ([args.int8_activations] if args.int8_activations != "auto" else AUTO_VARIANTS)
    res = quantize_best(
        fp32,
        data if data is not None else args.calib_data,
        fp32.with_name(f"{fp32.stem}-int8.onnx"),
        imgsz=imgsz,
        variants=variants,
        method=args.int8_method,
        calib_images=args.calib_images,
        map_tolerance=args.int8_map_tol,
        score=not args.int8_no_eval,
        rounds=args.int8_rounds,
        keep_best_measured=explicit,
    )
    if res["path"]:
        note = "" if res["chosen"] else " (kept because the variant was named, although it did not qualify)"
        print(f"int8: wrote {res['path']}{note}")
    else:
        print(f"int8: no int8 file written; the deliverable is {fp32}")


# ----------------------------------------------------------------------------------------------- benchmark


def cmd_benchmark(args: Any) -> int:
    # start-up: onnx and onnxruntime (1.6 s of a 1.9 s prune.py start, measured) load only for the command that runs
    from reports.backends import backend_kind
    from reports.export import export_onnx
    from reports.latency import add_ratios, benchmark_files



    if args.json:
        check_writable(args.json, "--json", folder=False)
    imgsz = _imgsz(args.imgsz, 640)
    paths: dict[str, Path] = {}
    torch_models: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-") as tmp:
        for w in map(Path, args.files):
            name = w.stem if w.stem not in paths else f"{w.stem}-{len(paths)}"
            if backend_kind(w):  # .onnx, OpenVINO .xml, ncnn .param (or their export folders)
                if not w.exists():
                    raise FileNotFoundError(f"model {w} not found")
                paths[name] = w
            else:
                model, meta = load_model(w)
                paths[name] = export_onnx(model, Path(tmp) / f"{name}.onnx", imgsz, metadata=meta)
                if args.torch:
                    torch_models[name] = model
        res = benchmark_files(
            paths,
            threads=_threads(args.threads),
            runs=args.runs,
            warmup=args.warmup,
            imgsz=imgsz,
            torch_models=torch_models,
            device=args.device,
            io_binding=args.io_binding,
        )
    for setting in res["results"].values():
        add_ratios(setting, next(iter(setting)))
    _print_latency(res)
    if args.json:
        atomic_write_text(args.json, json.dumps(res, indent=2) + "\n")
        print(f"wrote {args.json}")
    return 0


def _print_latency(res: dict) -> None:

    cpu = res["environment"]["cpu"]
    t = Table(title=f"latency ({cpu['model']}; {', '.join(cpu['flags'])}; ORT {res['environment']['onnxruntime']})")
    for c in ("model", "runtime", "threads", "median ms", "p90 ms", "vs first"):
        t.add_column(c, justify="left" if c in ("model", "runtime") else "right")
    for setting in res["results"].values():
        for name, r in setting.items():
            t.add_row(name, r.get("runtime", r.get("kind", "?")), str(r["threads"]), f"{r['median_ms']:.2f}",
                      f"{r['p90_ms']:.2f}", f"{r['speedup']:.2f}x")
    Console().print(t)


# ----------------------------------------------------------------------------------------------- report


def cmd_report(args: Any) -> int:
    # start-up: onnx and onnxruntime (1.6 s of a 1.9 s prune.py start, measured) load only for the command that runs
    from reports.measure import build_entries
    from reports.report import clear_previous_report, write_report


    weights = {
        role: w
        for role, w in (
            ("baseline", args.baseline),
            ("pruned", args.pruned),
            ("finetuned", args.finetuned),
            ("int8", args.int8),
        )
        if w
    }
    if not weights:
        raise ValueError("report: give at least one of --baseline, --pruned, --finetuned, --int8")
    imgsz = _imgsz(args.imgsz, 640)
    if not isinstance(imgsz, int):
        raise ValueError("report: --imgsz takes one integer (models are compared at a square size)")
    run_dir = Path(args.run_dir)
    extras, check_images = _report_inputs(args, imgsz)  # read before anything is written
    clear_previous_report(run_dir)
    entries = build_entries(
        weights,
        run_dir,
        data=args.data,
        imgsz=imgsz,
        threads=_threads(args.threads),
        runs=args.runs,
        evaluator=args.evaluator,
        check_images=check_images,
    )
    paths = write_report(run_dir, entries, args={k: v for k, v in vars(args).items() if k != "func"}, extras=extras)
    print(f"wrote {paths['json']} and {paths['md']}")
    return 0


def _report_inputs(args: Any, imgsz: int) -> tuple[dict[str, Any], list | None]:
    """extras of the report (side-by-side images, sweep rows) and the real images to check models on: up to
    CHECK_IMAGES of --images, else of --data's val split (None: synthetic ones). Bad paths fail here, before
    anything is written."""
    # start-up: onnx and onnxruntime (1.6 s of a 1.9 s prune.py start, measured) load only for the command that runs
    from reports.measure import CHECK_IMAGES


    extras: dict[str, Any] = {"imgsz": imgsz}
    check: list | None = None
    if args.data:

        data = load_data_yaml(args.data)
        check = list(data.val or data.train)[:CHECK_IMAGES] or None
    if args.images:
        found = list_images(args.images)
        extras["images"] = [str(p) for p in found[: args.max_images]]
        check = found[:CHECK_IMAGES]
    if args.sweep:
        extras["sweep"] = _read_sweep(Path(args.sweep))
    return extras, check


def _read_sweep(path: Path) -> list:
    try:
        rows = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise ValueError(f"--sweep {path}: not a readable JSON file ({type(e).__name__})") from None
    if not isinstance(rows, list):
        raise ValueError(f"--sweep {path}: expected a JSON list of {{ratio, map, map50, gflops}} rows")
    return rows


# ----------------------------------------------------------------------------------------------- detect


def cmd_detect(args: Any) -> int:
    # start-up: onnx and onnxruntime (1.6 s of a 1.9 s prune.py start, measured) load only for the command that runs
    from reports.detect import DetectOptions, detect


    options = DetectOptions(
        imgsz=_imgsz(args.imgsz, 640),
        conf_thres=args.conf_thres,
        iou_thres=args.iou_thres,
        max_det=args.max_det,
        save_txt=args.save_txt,
        save_conf=args.save_conf,
        exist_ok=args.exist_ok,
    )
    out = Path(args.out) if args.out else Path(args.project) / args.name
    run = detect(args.weights, args.source, out, options, threads=args.threads, device=args.device)
    print(run.summary())
    return 0


# ----------------------------------------------------------------------------------------------- parsers


def register(subparsers) -> None:
    """Add the export / benchmark / report / detect sub-commands to an argparse sub-parsers object."""
    p = subparsers.add_parser(
        "export",
        help="export a checkpoint to ONNX (optionally int8), checked against PyTorch",
        description="Write an ONNX file (BatchNorm folded, simplified, metadata as the official export writes it) and "
        "check it against PyTorch in ONNX Runtime on real images (--parity-source or --calib-data's val split; "
        "synthetic ones otherwise). --int8 also writes a static int8 copy when it is faster and holds accuracy.",
    )
    p.add_argument("--weights", required=True, help="official YOLOv5 .pt or a yolov5-slim checkpoint")
    p.add_argument("--imgsz", "--img", type=int, nargs="+", help=SHAPE_HELP + " (default: the checkpoint's)")
    p.add_argument("--batch", type=int, default=1, help="batch size of the exported input")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (default 17)")
    p.add_argument(
        "--dynamic",
        nargs="?",
        const="all",
        default="none",
        choices=["none", "batch", "hw", "all"],
        help="dynamic axes (bare --dynamic = batch, height and width)",
    )
    p.add_argument("--format", choices=["onnx", "openvino", "ncnn"], default="onnx",
                   help="also convert the checked ONNX to OpenVINO IR (extra: openvino) or ncnn (extra: ncnn); "
                   "--int8 with openvino quantises with nncf instead of ONNX Runtime")
    p.add_argument("--no-simplify", action="store_true", help="skip onnxslim")
    p.add_argument(
        "--replace-focus", action="store_true", help="export a Focus stem as the equivalent strided Conv (exact)"
    )
    p.add_argument("--out", help="output .onnx path or folder (default: next to --weights)")
    p.add_argument("--parity-source", help="image file/folder for the ORT-vs-PyTorch check (default: --calib-data val)")
    p.add_argument("--threads", type=int, default=None, help="ONNX Runtime threads for the checks")
    p.add_argument("--int8", action="store_true",
                   help="also write an int8 model: ONNX Runtime QDQ if it pays off; with --format openvino or ncnn "
                        "that runtime's int8, kept if it holds --int8-map-tol")
    p.add_argument("--calib-data", help="data.yaml: train images calibrate int8, val images score it")
    p.add_argument("--calib-images", type=int, default=32, help="number of calibration images")
    p.add_argument("--int8-activations", choices=["auto", "u8", "s8"], default="auto",
                   help="auto: time the default variants (u8, u8-rr, s8)")
    p.add_argument("--int8-variants", nargs="+", default=None, metavar="TAG",
                   help="int8 variants to time and score instead, e.g. u8 u8-rr u8-rr-qhead s8 (docs/runtimes.md)")
    p.add_argument("--int8-method", choices=["minmax", "entropy", "percentile"], default="percentile",
                   help="activation calibration (default percentile: the best measured on coco128)")
    p.add_argument("--int8-map-tol", type=float, default=0.01, help="max mAP50-95 loss vs fp32 to keep int8")
    p.add_argument("--int8-rounds", type=int, default=30, help="interleaved latency rounds for int8 vs fp32")
    p.add_argument("--int8-no-eval", action="store_true", help="do not score int8 on the val split")
    p.set_defaults(func=cmd_export)

    p = subparsers.add_parser(
        "benchmark",
        help="latency of several .pt/.onnx/.xml/.param files, timed interleaved",
        description="Time ONNX Runtime, OpenVINO or ncnn (and with --torch, PyTorch) on each model in turn, "
        "round-robin, at each thread count, so a busy machine slows every model alike; checkpoints are exported "
        "to a temporary ONNX.",
    )
    p.add_argument("files", nargs="+", help=".onnx, OpenVINO .xml or ncnn .param files, or checkpoints "
                   "(exported to a temporary ONNX)")
    p.add_argument("--imgsz", "--img", type=int, nargs="+", help=SHAPE_HELP + " (for dynamic models / .pt)")
    p.add_argument("--threads", nargs="+", help="thread counts, 'all' = every usable core (default: 1 all)")
    p.add_argument("--runs", type=int, default=50, help="timed runs per model (after --warmup)")
    p.add_argument("--warmup", type=int, default=5, help="untimed runs per model first (default 5)")
    p.add_argument("--torch", action="store_true", help="also time checkpoints in PyTorch")
    p.add_argument("--device", default="cpu", help="PyTorch device for --torch (cpu or cuda:0)")
    p.add_argument("--io-binding", action="store_true",
                   help="ONNX Runtime on input/output bound once to preallocated buffers (no per-call output copy)")
    p.add_argument("--json", help="write the figures to this JSON file")
    p.set_defaults(func=cmd_benchmark)

    p = subparsers.add_parser(
        "report",
        help="sizes, latency, mAP and plots of baseline/pruned/fine-tuned/int8",
        description="Compare up to four models (sizes, GFLOPs, interleaved latency, mAP with --data, plots, "
        "side-by-side detections) in report.json, report.md and a table. Checkpoints are exported and checked "
        "against PyTorch on up to 8 real images (--images, else --data's val split); a model that finds no box "
        "where the baseline finds some is flagged.",
    )
    p.add_argument("--baseline", help="baseline .pt or .onnx")
    p.add_argument("--pruned", help="pruned .pt or .onnx")
    p.add_argument("--finetuned", help="pruned + fine-tuned .pt or .onnx")
    p.add_argument("--int8", help="int8 .onnx or OpenVINO int8 .xml (any role takes .onnx/.xml/.param)")
    p.add_argument("--data", help="data.yaml to score every model on its val split")
    p.add_argument("--evaluator", choices=["auto", "torch", "onnx"], default="auto",
                   help="score every model the same way: torch (the official protocol) or onnx; auto = torch "
                        "unless a model is only an .onnx")
    p.add_argument("--imgsz", "--img", type=int, nargs="+", help="square inference size (default 640)")
    p.add_argument("--threads", nargs="+", help="ONNX Runtime thread counts (default: 1 all)")
    p.add_argument("--runs", type=int, default=50, help="timed ONNX Runtime runs per model (interleaved)")
    p.add_argument("--images", help="image file/folder for side-by-side detections")
    p.add_argument("--max-images", type=int, default=3, help="at most this many --images (default 3)")
    p.add_argument("--sweep", help="JSON list of {ratio, map, map50, gflops} rows for the sweep plot")
    p.add_argument("--run-dir", "--out", dest="run_dir", default="runs/report/exp",
                   help="report folder (default runs/report/exp); an earlier report's files there are replaced")
    p.set_defaults(func=cmd_report)

    p = subparsers.add_parser(
        "detect",
        help="draw a model's detections on images",
        description="Run a .pt, .onnx, OpenVINO .xml or ncnn .param model on an image or a folder and save the "
        "images with their boxes drawn (and, with --save-txt, YOLO-format labels) in runs/detect/exp, exp2, ... "
        "Pre- and post-processing are the official detect.py's, so the boxes are the official ones. An unreadable "
        "image is reported and skipped.",
    )
    p.add_argument("--weights", required=True, help=".pt (ours or official), .onnx, OpenVINO .xml or ncnn .param")
    p.add_argument("--source", required=True, help="an image file or a folder of images")
    p.add_argument("--imgsz", "--img", type=int, nargs="+", help=SHAPE_HELP + " (default 640)")
    p.add_argument("--conf-thres", type=float, default=0.25, help="confidence threshold (default 0.25)")
    p.add_argument("--iou-thres", type=float, default=0.45, help="NMS IoU threshold (default 0.45)")
    p.add_argument("--max-det", type=int, default=1000, help="maximum detections per image (default 1000)")
    p.add_argument("--save-txt", action="store_true",
                   help="also write labels/<image stem>.txt: 'class cx cy w h' normalised, one line per box "
                        "(images without boxes get no file, as in the official detect.py)")
    p.add_argument("--save-conf", action="store_true", help="append the confidence to each --save-txt line")
    p.add_argument("--threads", type=int, default=None,
                   help="ONNX Runtime / OpenVINO / ncnn threads (default: all cores)")
    p.add_argument("--device", default="cpu", help="PyTorch device for a .pt: cpu or cuda:0 (default cpu)")
    p.add_argument("--project", default="runs/detect", help="parent folder of run folders (default runs/detect)")
    p.add_argument("--name", default="exp", help="run folder name (default exp, then exp2, exp3, ...)")
    p.add_argument("--exist-ok", action="store_true",
                   help="write into project/name even if it exists (files of the same name are overwritten) "
                        "instead of the next free name")
    p.add_argument("--out", help="the run folder itself, instead of --project/--name (also incremented unless "
                                 "--exist-ok)")
    p.set_defaults(func=cmd_detect)
