"""Question: how much faster is a channel-pruned yolov5n than the baseline on this CPU, against its FLOPs cut?

Prunes yolov5n to each --target-flops (or --ratios) (prune.prune_model, BN-|gamma| importance, no fine-tuning:
accuracy is not the point here), exports baseline and pruned models to fixed 640x640 ONNX, and times them interleaved
(round-robin) with ONNX Runtime at 1 thread and at all usable cores (optionally PyTorch too). Extra ONNX
files can be added with --onnx. Writes bench/results/latency.json.

    python bench/latency.py --round-to 16            # yolov5n vs pruned to keep 70% and 50% of the FLOPs
    python bench/latency.py --target-flops --onnx a.onnx b.onnx   # only the given files
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

from common import REPO, SHARED, write_result

from reports.export import check_parity, export_onnx
from reports.latency import add_ratios, benchmark_files
from yolo.checkpoint import load_model
from yolo.flops import count_gflops, count_params


def main(argv: list[str] | None = None) -> int:
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
    ap.add_argument("--out", default=str(REPO / "bench" / "results" / "latency.json"))
    args = ap.parse_args(argv)

    t0 = time.time()
    work = Path(args.workdir)
    base, meta = load_model(args.weights)
    models = {"baseline": base}
    from prune.api import PruneConfig, prune_model

    for r in args.ratios:
        pruned, _ = prune_model(base, PruneConfig(ratio=r, round_to=args.round_to, imgsz=args.imgsz))
        models[f"pruned-{r:g}"] = pruned
    for f in args.target_flops:
        pruned, _ = prune_model(base, PruneConfig(target_flops=f, round_to=args.round_to, imgsz=args.imgsz))
        models[f"flops-{f:g}"] = pruned
    paths, info = {}, {}
    bus = SHARED / "reference" / "bus.jpg"
    for name, m in models.items():
        p = export_onnx(m, work / f"{name}.onnx", args.imgsz, metadata=meta)
        parity = check_parity(m, p, [bus] if bus.is_file() else [], raise_on_fail=True) if bus.is_file() else None
        paths[name] = p
        info[name] = {
            "params": count_params(m),
            "gflops": count_gflops(m, args.imgsz),
            "onnx_mb": os.path.getsize(p) / 1e6,
            "parity": parity.summary() if parity else None,
        }
        print(f"{name}: {info[name]['params'] / 1e6:.3f}M params, {info[name]['gflops']:.2f} GFLOPs -> {p}")
    for f in args.onnx:
        paths[Path(f).stem] = Path(f)
        info[Path(f).stem] = {"onnx_mb": os.path.getsize(f) / 1e6}
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
    figures = {
        "question": "ONNX Runtime CPU latency of pruned vs baseline yolov5n (interleaved, fixed 640x640 input)",
        "models": info,
        "round_to": args.round_to,
        **res,
        "seconds": round(time.time() - t0, 1),
    }
    out = Path(args.out)
    write_result(out.stem, figures, markdown(figures), out_dir=out.parent)
    print(f"wrote {args.out}")
    return 0


def markdown(result: dict) -> str:
    """The README table (from the figures): median/p90 per model and thread count, latency vs FLOPs ratio."""
    title = f"pruned yolov5n (--round-to {result.get('round_to', 8)}, no fine-tuning) vs baseline"
    lines = [f"### Deployment latency: {title}, ONNX Runtime CPU, 640x640, interleaved", "",
             "ORT call `run`: `session.run` (allocates and copies out the output every call); `io-binding`: input and "
             "output bound once to preallocated buffers, as a deployment loop runs.", "",
             "| threads | ORT call | model | GFLOPs | params | ONNX MB | median ms | p90 ms | latency ratio "
             "| FLOPs ratio | latency ratio / FLOPs ratio |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for key, models in result["results"].items():
        for name, r in models.items():
            info = result["models"].get(name, {})
            lat, fl = r["ratio_to_baseline"], r["gflops_ratio"]
            lines.append(
                f"| {r.get('threads', key)} | {'io-binding' if 'io-binding' in key else 'run'} | {name} | "
                f"{info.get('gflops', 0):.2f} | "
                f"{info.get('params', 0) / 1e6:.2f} M | {info.get('onnx_mb', 0):.1f} | {r['median_ms']:.1f} | "
                f"{r['p90_ms']:.1f} | {lat:.3f} | {fl:.3f} | {lat / fl:.2f} |"
            )
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
