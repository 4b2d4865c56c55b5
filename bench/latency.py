"""Question: how much faster is a channel-pruned yolov5n than the baseline on this CPU, against its FLOPs cut?

Prunes yolov5n to each --target-flops (or --ratios) (prune.prune_model, BN-|gamma| importance, no fine-tuning:
accuracy is not the point here), exports baseline and pruned models to fixed 640x640 ONNX, and times them interleaved
(round-robin) with ONNX Runtime at 1 thread and at all usable cores (optionally PyTorch too). Extra ONNX
files can be added with --onnx. Each run's raw record goes to bench/results/latency_runs/latency_round<N>.json
and the question's table, bench/results/latency.json (a row per --round-to, threads, ORT call and model), is
collected again from those records.

    python bench/latency.py --round-to 16            # yolov5n vs pruned to keep 70% and 50% of the FLOPs
    python bench/latency.py --target-flops --onnx a.onnx b.onnx   # only the given files
    python bench/latency.py --collect                # the table again from the records, timing nothing
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from benchlib.latency_table import QUESTION, run_markdown, write_table
from common import REPO, SHARED, runs_dir, write_result

from reports.export import check_parity, export_onnx
from reports.latency import add_ratios, benchmark_files
from yolo.checkpoint import load_model
from yolo.flops import count_gflops, count_params


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--weights", default=str(SHARED / "weights" / "yolov5n.pt"))
    ap.add_argument("--ratios", type=float, nargs="*", default=[], help="prune ratios (channels removed)")
    ap.add_argument("--target-flops", type=float, nargs="*", default=[0.7, 0.5], help="fractions of FLOPs kept")
    ap.add_argument("--round-to", type=int, default=8, help="kept channels per group rounded to a multiple of this")
    ap.add_argument("--onnx", nargs="*", default=[], help="extra ONNX files to time alongside")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--threads", nargs="+", default=["1", "all"])
    ap.add_argument("--runs", type=int, default=50)
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--torch", action="store_true", help="also time the PyTorch modules (CPU, or --device)")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--io-binding", choices=("both", "on", "off"), default="both",
                    help="ONNX Runtime runs with session.run (off), on bound preallocated input/output (on), or both")
    ap.add_argument("--workdir", default=str(REPO / "runs" / "bench_latency"))
    ap.add_argument("--out", help="the run's record (default bench/results/latency_runs/latency_round<N>.json; "
                                  "the table is collected again when the record is written there)")
    ap.add_argument("--collect", action="store_true",
                    help="only rewrite the table bench/results/latency.json from bench/results/latency_runs/")
    return ap.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.collect:
        path, md = write_table()
        print(md)
        print(f"wrote {path}")
        return 0
    t0 = time.time()
    base, meta = load_model(args.weights)
    models = pruned_models(base, args)
    paths, info = export_models(models, meta, Path(args.workdir), args.imgsz)
    for f in args.onnx:
        paths[Path(f).stem] = Path(f)
        info[Path(f).stem] = {"onnx_mb": os.path.getsize(f) / 1e6}
    res = time_models(args, models, paths, info)
    figures = {
        "question": "ONNX Runtime CPU latency of pruned vs baseline yolov5n (interleaved, fixed 640x640 input)",
        "models": info,
        "round_to": args.round_to,
        **res,
        "seconds": round(time.time() - t0, 1),
    }
    runs = runs_dir(QUESTION)
    out = Path(args.out) if args.out else runs / f"latency_round{args.round_to}.json"
    write_result(out.stem, figures, run_markdown(figures), out_dir=out.parent)
    print(f"wrote {out}")
    if out.parent.resolve() == runs.resolve():
        print(f"wrote {write_table()[0]} (the table, from every record in {runs})")
    return 0


def pruned_models(base, args: argparse.Namespace) -> dict:
    """The baseline and a pruned copy per --ratios and --target-flops (channel counts rounded to --round-to)."""
    from prune.api import PruneConfig, prune_model

    models = {"baseline": base}
    for r in args.ratios:
        pruned, _ = prune_model(base, PruneConfig(ratio=r, round_to=args.round_to, imgsz=args.imgsz))
        models[f"pruned-{r:g}"] = pruned
    for f in args.target_flops:
        pruned, _ = prune_model(base, PruneConfig(target_flops=f, round_to=args.round_to, imgsz=args.imgsz))
        models[f"flops-{f:g}"] = pruned
    return models


def export_models(models: dict, meta: dict, work: Path, imgsz: int) -> tuple[dict, dict]:
    """Each model to a fixed-shape ONNX file, checked against PyTorch on bus.jpg when it is there."""
    paths, info = {}, {}
    bus = SHARED / "reference" / "bus.jpg"
    for name, m in models.items():
        p = export_onnx(m, work / f"{name}.onnx", imgsz, metadata=meta)
        parity = check_parity(m, p, [bus] if bus.is_file() else [], raise_on_fail=True) if bus.is_file() else None
        paths[name] = p
        info[name] = {
            "params": count_params(m),
            "gflops": count_gflops(m, imgsz),
            "onnx_mb": os.path.getsize(p) / 1e6,
            "parity": parity.summary() if parity else None,
        }
        print(f"{name}: {info[name]['params'] / 1e6:.3f}M params, {info[name]['gflops']:.2f} GFLOPs -> {p}")
    return paths, info


def time_models(args: argparse.Namespace, models: dict, paths: dict, info: dict) -> dict:
    """Every ONNX file timed interleaved per thread setting (and ORT call); ratios to the first one."""
    threads = [None if t == "all" else int(t) for t in args.threads]
    common = dict(threads=threads, runs=args.runs, warmup=args.warmup, imgsz=args.imgsz, device=args.device)
    res = benchmark_files(paths, torch_models=models if args.torch and args.io_binding != "on" else None,
                          io_binding=args.io_binding == "on", **common)
    if args.io_binding == "both":  # session.run results under "1" / "all", bound ones under "1 io-binding" / ...
        bound = benchmark_files(paths, io_binding=True, **common)
        res["results"].update({f"{k} io-binding": v for k, v in bound["results"].items()})
        res["settings"]["io_binding"] = "both"
    first = next(iter(paths))
    for setting, rows in res["results"].items():
        add_ratios(rows, first)
        for name, r in rows.items():
            key = name.split(" (torch")[0]
            if info.get(key, {}).get("gflops") and info.get(first, {}).get("gflops"):
                r["gflops_ratio"] = info[key]["gflops"] / info[first]["gflops"]
            print(
                f"threads {setting:>3}  {name:28s} median {r['median_ms']:7.2f} ms  p90 {r['p90_ms']:7.2f} ms  "
                f"speed-up {r['speedup']:.2f}x"
                + (f"  (GFLOPs {r['gflops_ratio']:.2f}x)" if "gflops_ratio" in r else "")
            )
    return res


if __name__ == "__main__":
    raise SystemExit(main())
